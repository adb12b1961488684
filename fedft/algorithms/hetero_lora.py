"""Aggregating LoRA factors of different ranks: zero-padding, FLoRA stacking, FlexLoRA's SVD.

Per LoRA module, client ``k`` holds ``A_k`` of shape ``(r_k, k_in)`` and ``B_k`` of shape
``(d, r_k)`` (peft's ``lora_A.weight`` / ``lora_B.weight``) and weighs ``p_k`` (by examples, summing
to 1). Every client trains with the server's LoRA scale ``s = alpha / r`` (a client of rank
``r_k`` uses ``alpha_k = s r_k``), so the products ``B_k A_k`` are comparable across ranks and the
ideal update is ``dW = sum_k p_k B_k A_k`` whatever the ranks.

- **Zero-padding** (HetLoRA's naive baseline, Cho et al., 2024, arXiv 2401.06432):
  ``pad_R(A_k) = [A_k; 0]`` (``R x k_in``) and ``pad_R(B_k) = [B_k, 0]`` (``d x R``) keep each
  product exactly (``pad(B_k) pad(A_k) = B_k A_k``); FedIT then averages the padded factors, and
  client ``k`` restarts from the first ``r_k`` components (:func:`truncate_module`). As with FedIT,
  ``B_bar A_bar != dW``, and the components above ``r_k`` are shrunk by the clients that lack them.
- **FLoRA** (Wang et al., NeurIPS 2024, arXiv 2409.05976): stack ``A_stack = [p_1 A_1; ..; p_n
  A_n]`` (``sum r_k x k_in``) and ``B_stack = [B_1, .., B_n]`` (``d x sum r_k``), so that
  ``B_stack A_stack = sum_k p_k B_k A_k = dW`` exactly (:func:`flora_stack`). The stack's rank grows
  with the clients, so FLoRA merges it into the base weights between rounds and every client
  starts a fresh LoRA.
- **FlexLoRA** (Bai et al., 2024, arXiv 2402.11505): ``dW = U S V^T`` truncated at the server rank
  ``R``, ``B = U_R S_R^(1/2)``, ``A = S_R^(1/2) V_R^T`` (the product is FlexLoRA's; the balanced
  split of ``S`` between the factors is fedft's), and client ``k`` gets the first ``r_k``
  components, which is the rank-``r_k`` truncated SVD of ``dW`` (Eckart-Young: the best rank-``r_k``
  approximation in Frobenius norm). The SVD comes from thin QR factors of the stacked factors
  (:func:`lowrank_svd`), never from the dense ``d x k_in`` matrix.

Everything is float64 inside; factors come out float32.

Example
-------
>>> a = [torch.randn(2, 6), torch.randn(4, 6)]
>>> b = [torch.randn(5, 2), torch.randn(5, 4)]
>>> b_stack, a_stack = flora_stack(a, b, [0.25, 0.75])
>>> dense = 0.25 * b[0] @ a[0] + 0.75 * b[1] @ a[1]
>>> bool(torch.allclose(b_stack @ a_stack, dense, atol=1e-5))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fedft.algorithms.fedavg import weighted_sum
from fedft.errors import FedftError
from fedft.factors import FACTOR_NAME

_F64 = torch.float64


class RankError(FedftError, ValueError):
    """Factors whose ranks or shapes cannot be combined as asked; the message names the module."""


def pad_module(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad ``A`` (``r x k``) to ``rank x k`` and ``B`` (``d x r``) to ``d x rank``.

    The product is unchanged: ``[B, 0] [A; 0] = B A``.
    """
    r = a.shape[0]
    if b.shape[1] != r or r > rank:
        raise RankError(f"cannot pad rank {r} (B has {b.shape[1]} columns) to rank {rank}")
    a_pad = torch.zeros((rank, a.shape[1]), dtype=a.dtype)
    b_pad = torch.zeros((b.shape[0], rank), dtype=b.dtype)
    a_pad[:r], b_pad[:, :r] = a, b
    return a_pad, b_pad


def truncate_module(
    a: torch.Tensor, b: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``rank`` components: ``A[:rank]`` and ``B[:, :rank]`` (copies)."""
    if rank > a.shape[0] or rank < 1:
        raise RankError(f"cannot truncate rank {a.shape[0]} to rank {rank}")
    return a[:rank].clone(), b[:, :rank].clone()


def flora_stack(
    a_list: Sequence[torch.Tensor], b_list: Sequence[torch.Tensor], p: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """FLoRA's stacking: ``(B_stack, A_stack)`` with ``B_stack A_stack = sum_k p_k B_k A_k``.

    ``A_stack = [p_1 A_1; ..; p_n A_n]`` (``sum_k r_k x k_in``), ``B_stack = [B_1, .., B_n]``
    (``d x sum_k r_k``); Wang et al., NeurIPS 2024, arXiv 2409.05976. ``p`` is used as given
    (normalise it first). Returns float64 tensors.
    """
    _check_pairs(a_list, b_list)
    a_stack = torch.cat([p_k * a.to(_F64) for p_k, a in zip(p, a_list, strict=True)], dim=0)
    b_stack = torch.cat([b.to(_F64) for b in b_list], dim=1)
    return b_stack, a_stack


@dataclass(frozen=True)
class LowRankSVD:
    """``sum_k p_k B_k A_k = U diag(s) V^T`` over its nonzero part, float64.

    Attributes
    ----------
    u : torch.Tensor
        ``(d, q)``, orthonormal columns.
    s : torch.Tensor
        ``(q,)``, non-increasing, ``q <= sum_k r_k``.
    v : torch.Tensor
        ``(k_in, q)``, orthonormal columns.
    """

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` at ``rank``: ``B = U_r S_r^(1/2)``, ``A = S_r^(1/2) V_r^T`` (zero-padded).

        When the update has fewer than ``rank`` nonzero singular values the missing components
        are zero, so the shapes are always ``(rank, k_in)`` and ``(d, rank)``.
        """
        q = min(rank, self.s.numel())
        root = self.s[:q].sqrt()
        a = root[:, None] * self.v[:, :q].T  # (q, k_in)
        b = self.u[:, :q] * root[None, :]  # (d, q)
        return pad_module(a, b, rank)

    def kept_energy(self, rank: int) -> float:
        """``sum_{i<rank} s_i^2 / sum_i s_i^2``: the share of ``||dW||_F^2`` that rank keeps."""
        total = float(torch.sum(self.s**2))
        return float(torch.sum(self.s[:rank] ** 2)) / total if total > 0 else 1.0


def lowrank_svd(
    a_list: Sequence[torch.Tensor], b_list: Sequence[torch.Tensor], p: Sequence[float]
) -> LowRankSVD:
    """The SVD of ``dW = sum_k p_k B_k A_k`` from thin QR factors, without forming ``dW``.

    With ``(B_stack, A_stack)`` of :func:`flora_stack`, ``dW = B_stack A_stack``. Thin QR:
    ``B_stack = Q_b R_b`` (``d x s``, ``s x s``), ``A_stack^T = Q_a R_a`` (``k_in x s``, ``s x s``),
    so ``dW = Q_b (R_b R_a^T) Q_a^T``; the SVD of the small core ``R_b R_a^T = U' S V'^T`` gives
    ``dW = (Q_b U') S (Q_a V')^T`` (Bai et al., arXiv 2402.11505 take the SVD of the dense ``dW``;
    this is the same decomposition at ``O((d + k_in) s^2 + s^3)`` with ``s = sum_k r_k``).
    Singular values below ``1e-12 s_max`` (rounding residue of a rank-deficient stack) are dropped.
    """
    b_stack, a_stack = flora_stack(a_list, b_list, p)
    q_b, r_b = torch.linalg.qr(b_stack)  # (d, s), (s, s)
    q_a, r_a = torch.linalg.qr(a_stack.T)  # (k_in, s), (s, s)
    u_core, s, vh_core = torch.linalg.svd(r_b @ r_a.T)
    keep = int(torch.sum(s > 1e-12 * s[0])) if s.numel() and float(s[0]) > 0 else 0
    return LowRankSVD(q_b @ u_core[:, :keep], s[:keep], q_a @ vh_core[:keep].T)


def module_pairs(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """``{module: (A key, B key)}`` of a factor state, in the state's order."""
    found: dict[str, dict[str, str]] = {}
    for key in state:
        match = FACTOR_NAME.match(key)
        if match:
            found.setdefault(match["module"], {})[match["factor"]] = key
    return {m: (f["A"], f["B"]) for m, f in found.items() if f.keys() == {"A", "B"}}


def state_rank(state: Mapping[str, torch.Tensor]) -> int:
    """The rank of a factor state (the rows of its ``lora_A`` factors, which must agree)."""
    ranks = {state[a].shape[0] for a, _ in module_pairs(state).values()}
    if len(ranks) != 1:
        raise RankError(f"a factor state must have one rank, found {sorted(ranks)}")
    return ranks.pop()


def pad_state(state: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """Every module of ``state`` zero-padded to ``rank`` (:func:`pad_module`); others unchanged."""
    return _map_modules(state, lambda a, b: pad_module(a, b, rank))


def truncate_state(state: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """Every module of ``state`` cut to its first ``rank`` components (:func:`truncate_module`)."""
    return _map_modules(state, lambda a, b: truncate_module(a, b, rank))


def flexlora_aggregate(
    states: Sequence[Mapping[str, torch.Tensor]], p: Sequence[float], rank: int
) -> tuple[dict[str, torch.Tensor], float]:
    """FlexLoRA over whole states: each module's ``sum_k p_k B_k A_k``, truncated SVD at ``rank``.

    Clients may have any ranks (each state its own); the result has ``rank`` (float32). Keys that
    are not LoRA factors are averaged with ``p``. Returns the state and the mean over modules of
    the kept share of ``||dW||_F^2`` (:meth:`LowRankSVD.kept_energy`).
    """
    out: dict[str, torch.Tensor] = {}
    energies = []
    pairs = module_pairs(states[0])
    for a_key, b_key in pairs.values():
        svd = lowrank_svd([s[a_key] for s in states], [s[b_key] for s in states], p)
        a, b = svd.factors(rank)
        out[a_key], out[b_key] = a.float(), b.float()
        energies.append(svd.kept_energy(rank))
    factor_keys = {key for pair in pairs.values() for key in pair}
    for key in states[0]:
        if key not in factor_keys:
            out[key] = weighted_sum([s[key] for s in states], p)
    return {key: out[key] for key in states[0]}, math.fsum(energies) / max(len(energies), 1)


_ModuleMap = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def flora_accumulate(
    merged: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    p: Sequence[float],
) -> dict[str, torch.Tensor]:
    """FLoRA's merge, in factor form: ``dW_merged + sum_k p_k B_k A_k``, recompressed exactly.

    FLoRA (arXiv 2409.05976) adds each round's stacked update to the base weights and restarts
    every client from a fresh LoRA. fedft keeps what has been merged as factors
    ``(B_m, A_m)`` with ``B_m A_m = sum_t dW_t`` (``merged``; empty before the first round) so that
    server and clients add the same ``s B_m A_m`` to the same base weights (``s = alpha / r``;
    :mod:`fedft.merged_base`). Each round the clients' factors are stacked beside the merged ones
    (:func:`flora_stack`, weights ``(1, p_1, .., p_n)``) and recompressed by
    :func:`lowrank_svd`, keeping every nonzero singular value: the product is unchanged (up to
    float64 rounding) and the rank stays at most ``min(d, k_in)``. Only LoRA factor pairs are kept.
    """
    out: dict[str, torch.Tensor] = {}
    for a_key, b_key in module_pairs(states[0]).values():
        a_list = [s[a_key] for s in states]
        b_list = [s[b_key] for s in states]
        weights = list(p)
        if a_key in merged:
            a_list, b_list, weights = [merged[a_key], *a_list], [merged[b_key], *b_list], [1.0, *p]
        svd = lowrank_svd(a_list, b_list, weights)
        a, b = svd.factors(max(svd.s.numel(), 1))
        out[a_key], out[b_key] = a, b  # float64: merges repeat, their rounding must not pile up
    return out


def _map_modules(state: Mapping[str, torch.Tensor], fn: _ModuleMap) -> dict[str, torch.Tensor]:
    out = dict(state)
    for module, (a_key, b_key) in module_pairs(state).items():
        try:
            out[a_key], out[b_key] = fn(state[a_key], state[b_key])
        except RankError as err:
            raise RankError(f"`{module}`: {err}") from None
    return out


def _check_pairs(a_list: Sequence[torch.Tensor], b_list: Sequence[torch.Tensor]) -> None:
    if not a_list or len(a_list) != len(b_list):
        raise RankError(f"{len(a_list)} A factors and {len(b_list)} B factors")
    for i, (a, b) in enumerate(zip(a_list, b_list, strict=True)):
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise RankError(f"client {i}: A {tuple(a.shape)} and B {tuple(b.shape)} do not pair")
        if a.shape[1] != a_list[0].shape[1] or b.shape[0] != b_list[0].shape[0]:
            raise RankError(f"client {i}: module shape differs from client 0's")
