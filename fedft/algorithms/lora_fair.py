"""LoRA-FAIR: server-side residual correction of the averaged LoRA factors.

LoRA-FAIR (Bian et al., 2024, "LoRA-FAIR: Federated LoRA Fine-Tuning with Aggregation and
Initialization Refinement", arXiv 2411.14961). Per LoRA module, with client weights ``p_k >= 0``
normalised to sum to 1, ``A_k`` of shape ``(r, k)`` and ``B_k`` of shape ``(d, r)`` (peft's
``lora_A.weight`` and ``lora_B.weight``)::

    A_bar = sum_k p_k A_k,   B_bar = sum_k p_k B_k,   dW = sum_k p_k B_k A_k
    dB*   = argmin_dB  S(dW, (B_bar + dB) A_bar) + lam ||dB||_F
    S(X, Y) = 1 - <X, Y>_F / (||X||_F ||Y||_F)

and the clients start the next round from ``(A_bar, B_bar + dB*)``. The d x k matrix ``dW`` is
never formed. With ``B' = B_bar + dB`` every term is a function of factor products::

    <dW, B' A_bar>   = <B', M>,          M = sum_k p_k B_k (A_k A_bar^T)      (d x r, once)
    ||B' A_bar||^2   = tr(B'^T B' G),    G = A_bar A_bar^T                    (r x r, once)
    ||dW||^2         = sum_{j,l} p_j p_l tr((B_j^T B_l)(A_l A_j^T))           (once)

The solver is plain gradient descent from ``dB = 0``, ``dB <- dB - lr g``. Its iterates never
leave the column span of ``[B_bar, M]``: the gradient (see :func:`_objective_and_grad`) combines
``B' G``, ``M`` and ``dB``, and right-multiplication by ``G`` keeps a column span. With the thin QR
``[B_bar, M] = U R`` (``U`` orthonormal, d x s, ``s <= 2r``) and ``G = V diag(e) V^T``, the map
``X -> U^T X V`` is an isometry for the Frobenius inner product, so gradient descent runs
unchanged on the s x r coordinates ``Y = U^T B' V``, where ``B' G`` becomes ``Y diag(e)``. An
iteration is a handful of elementwise operations on s x r arrays, O(r^2), whatever ``d``, ``k`` and
the number of clients (no BLAS call, so no thread start-up either); the d-dependent work (Gram
products, QR, ``U Y V^T``) is done once, O((d + k) n^2 r^2).

Gradient descent rather than Adam: Adam's per-coordinate step, about ``lr`` = 0.01, exceeds the
entries of a LoRA ``B`` after a round (about 1e-3, as ``B`` starts at 0; on LLaMA-shaped factors
Adam at lr 0.01 never beat ``dB = 0`` in 500 steps), and it is not rotation-equivariant, so the
span argument above fails for it. At ``dB = 0`` the gradient of
``||dB||`` is replaced by the minimum-norm element of the objective's subdifferential,
``g_S max(0, 1 - lam / ||g_S||)``: zero (no NaN, no move) when ``dB = 0`` is already stationary.
The solve keeps the iterate with the lowest objective, hence
``cos_after >= cos_before + lam ||dB*|| >= cos_before``; it stops early once the objective changes
by at most ``tol`` in one iteration. Note the objective is not scale-free: ``S`` is, but
``lam ||dB||`` is not, and ``||grad S||`` grows as ``1 / ||B'||``; when ``||grad S(0)|| <= lam``,
``dB* = 0`` exactly.

Arithmetic is float64: ``1 - cos`` is often 1e-3..1e-6 and ``||dW||^2`` is a sum of signed Gram
terms, both of which float32 (eps 6e-8) resolves poorly; the solve itself works on r x r and
s x r matrices, so the price is only in the one-off Gram products. Outputs are float32.

Example
-------
>>> a = [torch.randn(4, 10), torch.randn(4, 10)]
>>> b = [torch.randn(12, 4), torch.randn(12, 4)]
>>> fix = correct_module(a, b, weights=[30, 10])
>>> fix.cos_after >= fix.cos_before
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedft.algorithms.fedavg import normalized_weights
from fedft.config import LoraFairConfig
from fedft.errors import FedftError

_F64 = torch.float64
# Squared norms below this fraction of their upper bound are rounding residue: treated as zero.
_ZERO_REL = 1e-24
DEFAULT_CONFIG = LoraFairConfig()  # the paper's scripts: lam 0.01, 500 steps, lr 0.01


class LoraFairError(FedftError, ValueError):
    """LoRA factors or weights that LoRA-FAIR cannot aggregate; the message names the culprit."""


@dataclass(frozen=True)
class FactorProducts:
    """The quantities of the closed-form objective, all float64.

    Attributes
    ----------
    a_bar, b_bar : torch.Tensor
        Weighted averages, ``(r, k)`` and ``(d, r)``.
    m : torch.Tensor
        ``M = sum_k p_k B_k (A_k A_bar^T)``, ``(d, r)``.
    gram : torch.Tensor
        ``G = A_bar A_bar^T``, ``(r, r)``.
    ideal_sq : float
        ``||dW||_F^2``.
    a_scale, b_scale, ab_scale : float
        ``sum_k p_k ||A_k||``, ``sum_k p_k ||B_k||``, ``sum_k p_k ||B_k|| ||A_k||``: upper bounds
        of ``||A_bar||``, ``||B_bar||``, ``||dW||`` against which "numerically zero" is judged.
    """

    a_bar: torch.Tensor
    b_bar: torch.Tensor
    m: torch.Tensor
    gram: torch.Tensor
    ideal_sq: float
    a_scale: float
    b_scale: float
    ab_scale: float

    def terms(self, delta_b: torch.Tensor) -> tuple[float, float]:
        """Return ``(<dW, B' A_bar>, ||B' A_bar||^2)`` for ``B' = B_bar + delta_b``."""
        b_new = self.b_bar + delta_b.to(_F64)  # (d, r)
        inner = float(torch.vdot(b_new.flatten(), self.m.flatten()))
        return inner, max(float(torch.vdot(b_new.flatten(), (b_new @ self.gram).flatten())), 0.0)


@dataclass(frozen=True)
class ModuleSummary:
    """The scalars of one module's correction, for reports and logs."""

    status: str
    cos_before: float
    cos_after: float
    steps_run: int
    diverged: bool
    objective: float
    delta_norm: float
    solve_s: float


@dataclass(frozen=True)
class ModuleCorrection:
    """LoRA-FAIR result for one module: the next round's starting factors and diagnostics.

    Attributes
    ----------
    a_bar, b_corrected : torch.Tensor
        ``A_bar`` and ``B_bar + dB*``, float32, in the input shapes.
    delta_b : torch.Tensor
        ``dB*``, float32 (exactly zero when no correction was made).
    cos_before, cos_after : float
        ``cos(dW, B A_bar)`` for ``B = B_bar`` and ``B = B_bar + dB*``. By convention 1 when both
        updates are zero and 0 when exactly one is.
    steps_run : int
        Gradient steps taken.
    diverged : bool
        The solve went non-finite; the plain averages were returned instead.
    objective : float
        ``1 - cos_after + lam ||dB*||``.
    status : str
        ``"converged"``, ``"max_steps"``, ``"diverged"``, or why no solve was attempted:
        ``"zero_ideal_update"`` (``dW = 0``), ``"zero_a_bar"``, ``"zero_average_update"``
        (``B_bar A_bar = 0``); in these cases the cosine is undefined and ``dB* = 0``.
    solve_s : float
        Wall time of this module's correction, seconds.
    """

    a_bar: torch.Tensor
    b_corrected: torch.Tensor
    delta_b: torch.Tensor
    cos_before: float
    cos_after: float
    steps_run: int
    diverged: bool
    objective: float
    status: str
    solve_s: float

    def summary(self) -> ModuleSummary:
        """Return the scalar fields, without tensors."""
        return ModuleSummary(
            status=self.status,
            cos_before=self.cos_before,
            cos_after=self.cos_after,
            steps_run=self.steps_run,
            diverged=self.diverged,
            objective=self.objective,
            delta_norm=float(torch.linalg.vector_norm(self.delta_b.to(_F64))),
            solve_s=self.solve_s,
        )


def client_weights(weights: Sequence[float], n_clients: int) -> list[float]:
    """``p_k = w_k / sum_j w_j`` (:func:`fedft.algorithms.fedavg.normalized_weights`).

    Raises
    ------
    LoraFairError
        The weights are not ``n_clients`` finite numbers >= 0 with a positive sum.
    """
    try:
        return normalized_weights(weights, n_clients)
    except ValueError as err:
        raise LoraFairError(str(err)) from None


def factor_products(
    a_list: Sequence[torch.Tensor],
    b_list: Sequence[torch.Tensor],
    weights: Sequence[float],
    name: str = "module",
) -> FactorProducts:
    """Compute ``A_bar, B_bar, M, G, ||dW||^2`` from factor products only (see module docstring).

    ``||dW||^2`` uses the stacked factors ``B_cat = [p_1 B_1 .. p_n B_n]`` (d x nr) and
    ``A_cat = [A_1; ..; A_n]`` (nr x k): ``dW = B_cat A_cat``, ``||dW||^2 = <B_cat^T B_cat,
    A_cat A_cat^T>``, O((d + k) n^2 r^2) once. With many clients (``n r (d + k) > d k``) the
    dense ``dW = B_cat A_cat`` costs less, O(d k n r), linear in ``n``, and holds no more values
    than ``A_cat`` or ``B_cat`` (``d k <= n r max(d, k)``): that form is taken then.

    Raises
    ------
    LoraFairError
        Shapes disagree across clients, the ranks of A and B differ, or a value is not finite;
        the message names ``name`` and the client index.
    """
    _check_factors(a_list, b_list, name)
    p = torch.tensor(client_weights(weights, len(a_list)), dtype=_F64)
    # Whole-stack operations: one parallel region each, not one per client.
    a_stack = torch.stack(list(a_list)).to(_F64)  # (n, r, k)
    b_stack = torch.stack(list(b_list), dim=1).to(_F64) * p[:, None]  # (d, n, r): p_k B_k
    if not (torch.isfinite(a_stack).all() and torch.isfinite(b_stack).all()):
        _raise_non_finite(a_list, b_list, name)
    (n, rank, width), height = a_stack.shape, b_stack.shape[0]
    a_cat, b_cat = a_stack.view(n * rank, width), b_stack.view(height, n * rank)
    a_bar = (p @ a_stack.view(n, rank * width)).view(rank, width)  # (r, k)
    b_bar = b_stack.sum(1)  # (d, r)
    m = b_cat @ (a_cat @ a_bar.T)  # (d, n r) @ (n r, r) -> (d, r)
    if n * rank * (height + width) <= height * width:  # the Grams are the cheaper: O((d+k) (nr)^2)
        ideal_sq = float(torch.vdot((b_cat.T @ b_cat).flatten(), (a_cat @ a_cat.T).flatten()))
    else:  # many clients: dW itself, O(d k nr), is linear in n and no larger than a stack
        ideal_sq = float(torch.linalg.matrix_norm(b_cat @ a_cat) ** 2)
    a_norms = torch.linalg.matrix_norm(a_stack)  # (n,)
    b_norms = torch.linalg.matrix_norm(b_stack.transpose(0, 1))  # (n,): p_k ||B_k||
    gram = a_bar @ a_bar.T  # (r, r)
    return FactorProducts(
        a_bar=a_bar,
        b_bar=b_bar,
        m=m,
        gram=gram,
        ideal_sq=max(ideal_sq, 0.0),
        a_scale=float(p @ a_norms),
        b_scale=float(b_norms.sum()),
        ab_scale=float(a_norms @ b_norms),
    )


def correct_module(
    a_list: Sequence[torch.Tensor],
    b_list: Sequence[torch.Tensor],
    weights: Sequence[float],
    config: LoraFairConfig = DEFAULT_CONFIG,
    name: str = "module",
) -> ModuleCorrection:
    """Apply LoRA-FAIR to one LoRA module (equations in the module docstring).

    Parameters
    ----------
    a_list, b_list : Sequence[torch.Tensor]
        Per client, ``A_k`` of shape ``(r, k)`` and ``B_k`` of shape ``(d, r)``.
    weights : Sequence[float]
        Non-negative client weights (e.g. example counts), normalised here.
    config : LoraFairConfig
        Solver hyper-parameters.
    name : str
        Module name used in error messages.

    Returns
    -------
    ModuleCorrection
        ``A_bar`` and ``B_bar + dB*`` as float32, and the solve's diagnostics.
    """
    start = time.perf_counter()
    prod = factor_products(a_list, b_list, weights, name)
    inner, upd_sq = prod.terms(torch.zeros_like(prod.b_bar))
    cos_plain = _cosine(inner, upd_sq, prod.ideal_sq)
    reason = _degenerate_status(prod, upd_sq)
    out = _unchanged(prod, cos_plain, reason) if reason else _gradient_descent(prod, config)
    b_corrected = (prod.b_bar + out.delta).float()
    if out.status == "diverged" or not torch.isfinite(b_corrected).all():
        cos = out.cos_before if math.isfinite(out.cos_before) else cos_plain
        out = _unchanged(prod, cos, "diverged", out.steps)
        b_corrected = prod.b_bar.float()
    return ModuleCorrection(
        a_bar=prod.a_bar.float(),
        b_corrected=b_corrected,
        delta_b=out.delta.float(),
        cos_before=out.cos_before,
        cos_after=out.cos_after,
        steps_run=out.steps,
        diverged=out.status == "diverged",
        objective=out.objective,
        status=out.status,
        solve_s=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class _Outcome:
    """What a solve produced: ``dB`` (d x r, float64) and its diagnostics."""

    delta: torch.Tensor
    cos_before: float
    cos_after: float
    objective: float
    steps: int
    status: str


def _unchanged(prod: FactorProducts, cos: float, status: str, steps: int = 0) -> _Outcome:
    """Return the outcome ``dB = 0`` (plain averages) with the given cosine and status."""
    return _Outcome(torch.zeros_like(prod.b_bar), cos, cos, 1 - cos, steps, status)


def _gradient_descent(prod: FactorProducts, config: LoraFairConfig) -> _Outcome:
    """Descend from ``dB = 0`` in the coordinates ``U^T dB V``; keep the best iterate."""
    rank = prod.b_bar.shape[1]
    basis, coords = torch.linalg.qr(torch.cat([prod.b_bar, prod.m], dim=1))  # (d, s), (s, 2r)
    gram_eig, rot = torch.linalg.eigh(prod.gram)  # G = rot diag(gram_eig) rot^T
    gram_eig = gram_eig.clamp(min=0.0)  # G is PSD; drop rounding below 0
    y_bar, y_m = coords[:, :rank] @ rot, coords[:, rank:] @ rot  # U^T B_bar V, U^T M V: (s, r)
    delta = torch.zeros_like(y_bar)  # U^T dB V
    ideal_norm = math.sqrt(prod.ideal_sq)
    best, cos_before = (delta, math.nan, math.inf), math.nan
    previous, step, status = math.inf, 0, "max_steps"
    while True:
        found = _objective_and_grad(y_bar, y_m, gram_eig, delta, ideal_norm, config.lam)
        if found is None:
            zero = torch.zeros_like(prod.b_bar)
            return _Outcome(zero, cos_before, math.nan, math.nan, step, "diverged")
        objective, cos, grad = found
        cos_before = cos if step == 0 else cos_before
        if objective < best[2]:
            best = (delta, cos, objective)
        if step == config.steps:
            break
        if config.tol > 0 and abs(previous - objective) <= config.tol:
            status = "converged"
            break
        previous, step = objective, step + 1
        delta = delta - config.lr * grad  # a new tensor: `best` may hold the old one
    return _Outcome(basis @ (best[0] @ rot.T), cos_before, best[1], best[2], step, status)


def _objective_and_grad(
    y_bar: torch.Tensor,
    y_m: torch.Tensor,
    gram_eig: torch.Tensor,
    delta: torch.Tensor,
    ideal_norm: float,
    lam: float,
) -> tuple[float, float, torch.Tensor] | None:
    """Return ``(f, cos, subgradient)`` in the coordinates ``Y = U^T B' V``, or None if not finite.

    With ``c = <B', M> / (||X|| ||dW||)`` and ``||X||^2 = tr(B'^T B' G)``,
    ``dS/dB' = -dc/dB' = c B' G / ||X||^2 - M / (||X|| ||dW||)``; in coordinates ``B' G`` is
    ``Y diag(e)``. A non-finite step shows up here at the next evaluation, through ``||dB||``.
    """
    y = y_bar + delta  # (s, r)
    yg = y * gram_eig  # B' G in coordinates
    inner = float(torch.vdot(y.flatten(), y_m.flatten()))
    upd_sq = float(torch.vdot(y.flatten(), yg.flatten()))
    delta_norm = float(torch.linalg.vector_norm(delta))
    if not (math.isfinite(inner) and math.isfinite(delta_norm) and 0 < upd_sq < math.inf):
        return None
    cos = inner / (math.sqrt(upd_sq) * ideal_norm)
    grad = yg.mul_(cos / upd_sq).sub_(y_m, alpha=1 / (math.sqrt(upd_sq) * ideal_norm))
    if delta_norm > 0:
        grad.add_(delta, alpha=lam / delta_norm)
    else:  # minimum-norm subgradient of S + lam ||dB|| at dB = 0
        grad_norm = float(torch.linalg.vector_norm(grad))
        grad.mul_(max(0.0, 1 - lam / grad_norm) if grad_norm > 0 else 0.0)
    objective = 1.0 - cos + lam * delta_norm
    return (objective, cos, grad) if math.isfinite(objective) else None


def _cosine(inner: float, upd_sq: float, ideal_sq: float) -> float:
    """Return ``inner / sqrt(upd_sq ideal_sq)``; 1 if both updates are zero, 0 if one is."""
    if upd_sq == 0 or ideal_sq == 0:
        return 1.0 if upd_sq == ideal_sq else 0.0
    return inner / (math.sqrt(upd_sq) * math.sqrt(ideal_sq))


def _degenerate_status(prod: FactorProducts, upd_sq: float) -> str | None:
    """Name the reason the cosine is undefined at ``dB = 0``, or None when the solve can run."""
    if prod.ideal_sq <= _ZERO_REL * prod.ab_scale**2:
        return "zero_ideal_update"
    if float(torch.linalg.matrix_norm(prod.a_bar)) ** 2 <= _ZERO_REL * prod.a_scale**2:
        return "zero_a_bar"
    if upd_sq <= _ZERO_REL * (prod.a_scale * prod.b_scale) ** 2:
        return "zero_average_update"
    return None


def _check_factors(
    a_list: Sequence[torch.Tensor], b_list: Sequence[torch.Tensor], name: str
) -> None:
    """Raise LoraFairError unless all A_k share a shape (r, k) and all B_k (d, r), as floats."""
    if not a_list or len(a_list) != len(b_list):
        raise LoraFairError(f"`{name}`: {len(a_list)} A factors but {len(b_list)} B factors")
    a_shape, b_shape = tuple(a_list[0].shape), tuple(b_list[0].shape)
    if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
        raise LoraFairError(
            f"`{name}`: lora_A {a_shape} and lora_B {b_shape} are not (r, k) and (d, r) "
            "with the same rank r"
        )
    for i, (a, b) in enumerate(zip(a_list, b_list, strict=True)):
        for factor, tensor, shape in (("lora_A", a, a_shape), ("lora_B", b, b_shape)):
            if tuple(tensor.shape) != shape:
                raise LoraFairError(
                    f"`{name}.{factor}`: client {i} has shape {tuple(tensor.shape)}, "
                    f"client 0 has {shape}"
                )
            if not tensor.is_floating_point():
                raise LoraFairError(f"`{name}.{factor}`: client {i} has dtype {tensor.dtype}")


def _raise_non_finite(
    a_list: Sequence[torch.Tensor], b_list: Sequence[torch.Tensor], name: str
) -> None:
    """Raise LoraFairError naming the first client and factor holding a NaN or an infinity."""
    for i, (a, b) in enumerate(zip(a_list, b_list, strict=True)):
        for factor, tensor in (("lora_A", a), ("lora_B", b)):
            if not torch.isfinite(tensor).all():
                raise LoraFairError(f"`{name}.{factor}`: client {i} has non-finite values")
    raise LoraFairError(f"`{name}`: non-finite values after weighting")  # unreachable for p <= 1
