"""Checks a client's reply must pass before it may touch the global state.

Per reply (no other reply needed): :func:`validate_factors` (names, shapes, dtypes, finite values),
:func:`check_update_limits` (the change is bounded, absolutely and relative to the global factors)
and :func:`check_lora_products` (every module's ``B A`` is finite in float32). Per round:
:func:`bounded_weights` (what a claimed example count may weigh) and :func:`norm_outliers`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedft.errors import ReplyError
from fedft.factors import FACTOR_NAME, check_same_layout

FLOAT32_MAX = float(np.finfo(np.float32).max)


def validate_factors(
    reply: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor], num_examples: float
) -> None:
    """Raise :class:`ReplyError` unless ``reply`` can be averaged into ``template``'s state.

    Checks, in order: the example count is a finite number > 0; the same tensor names and shapes
    as the global state; a floating dtype equal to the global one; finite values only.
    """
    if not (num_examples > 0 and num_examples < float("inf")):
        raise ReplyError(f"num-examples must be a finite number > 0, got {num_examples}")
    check_same_layout(reply, template, "reply")
    for name, tensor in reply.items():
        if tensor.dtype != template[name].dtype:
            raise ReplyError(
                f"reply: tensor {name!r} has dtype {tensor.dtype}, expected {template[name].dtype}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise ReplyError(f"reply: tensor {name!r} holds non-finite values (NaN or Inf)")


def update_norm(factors: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor]) -> float:
    """``||X_k - X_global||``: the Frobenius norm of a reply's change, over all its tensors.

    Accumulated in float64; ``factors`` must have ``start``'s names and shapes (validate first).
    """
    total = 0.0
    for name, tensor in factors.items():
        delta = tensor.detach().to(torch.float64) - start[name].detach().to(torch.float64)
        total += float(torch.sum(delta * delta))
    return math.sqrt(total)


def norm_outliers(deltas_norms: Sequence[float], factor: float = 10.0) -> list[int]:
    """Indices of updates whose norm is more than ``factor`` x the median of the others' norms.

    Reply ``k`` is an outlier when ``||X_k - X_global|| > factor * median_{j != k} ||X_j -
    X_global||`` (see :func:`update_norm`); a non-finite norm is always one. This catches a
    client whose update is far larger than everyone's (a scaled or poisoned update, a diverged
    run) before it dominates the average.

    Why the median of the others: the reference must not move with the outliers it is meant to
    find. A mean is pulled up by the very update it judges (one update 100x the others lifts the
    mean of all to about 20x); the median of the others ignores any minority of huge norms, so
    fewer than half of the others may be outliers and each is still caught. Comparing with the
    others (leave-one-out) rather than with the median of all also keeps the rule symmetric.

    Fewer than 3 norms give no outlier: with 2 there is no majority to say which one is off.

    Parameters
    ----------
    deltas_norms : Sequence[float]
        One update norm per reply, >= 0.
    factor : float
        How many times the median of the others a norm may reach; > 1.

    Returns
    -------
    list[int]
        The outliers' indices, increasing.

    Examples
    --------
    >>> norm_outliers([1.0, 1.2, 0.9, 120.0])
    [3]
    >>> norm_outliers([1.0, 50.0])  # two: no majority
    []
    """
    if not factor > 1:
        raise ValueError(f"`factor` must be > 1, got {factor}")
    norms = np.asarray(deltas_norms, dtype=np.float64)
    if norms.size < 3:
        return []
    finite = np.isfinite(norms)
    medians = leave_one_out_medians(norms[finite])  # of the other finite norms, per finite one
    others = np.full(norms.size, np.inf)
    others[finite] = medians
    # A non-finite norm is always out; a finite one when it exceeds factor x the others' median
    # (none when no other norm is finite: the median is then NaN, and the comparison False).
    return [k for k in range(norms.size) if not finite[k] or norms[k] > factor * others[k]]


def leave_one_out_medians(values: np.ndarray) -> np.ndarray:
    """``m_k = median_{j != k} v_j`` for every ``k``, in O(n log n) (one sort; n < 2: NaN).

    Removing ``v_k`` (at rank ``p_k`` of the sorted ``s``) shifts the ranks above it down by one,
    so the middle of the other ``n - 1`` values is ``s`` at rank ``i`` if ``i < p_k`` and at
    ``i + 1`` otherwise: for odd ``n - 1`` the one middle rank ``i = (n - 2) / 2``, for even the
    mean of ``i = (n - 1) / 2 - 1`` and ``(n - 1) / 2``. Equal to ``np.median(np.delete(v, k))``
    (a test checks), which costs O(n) per ``k`` and O(n^2) for all: 1,000 replies a round made
    the screening step quadratic.

    Examples
    --------
    >>> leave_one_out_medians(np.array([1.0, 3.0, 2.0, 10.0])).tolist()
    [3.0, 2.0, 3.0, 2.0]
    """
    n = values.size
    if n < 2:
        return np.full(n, np.nan)
    order = np.argsort(values, kind="stable")
    s = values[order]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)

    def other(i: int) -> np.ndarray:  # the i-th smallest of the others, for every k
        return np.where(i < rank, s[i], s[min(i + 1, n - 1)])

    m = n - 1
    if m % 2:
        return other((m - 1) // 2)
    return (other(m // 2 - 1) + other(m // 2)) / 2


def check_update_limits(
    factors: Mapping[str, torch.Tensor],
    start: Mapping[str, torch.Tensor],
    max_norm: float,
    max_relative: float,
    start_norm: float | None = None,
) -> float:
    """Raise :class:`ReplyError` unless ``||X_k - X|| <= min(max_norm, max_relative ||X||)``.

    ``X`` is the round's global state (``start``) and ``X_k`` the reply; both norms are
    Frobenius over all tensors (:func:`update_norm`). The relative limit needs no other reply, so
    it holds with one or two replies too, where :func:`norm_outliers` has no majority to go by;
    with a zero global state only the absolute limit applies.

    ``start_norm``, when given, is ``||X||`` computed once for the round's replies.

    Returns
    -------
    float
        The reply's update norm.
    """
    norm = update_norm(factors, start)
    size = state_norm(start) if start_norm is None else start_norm
    limit = min(max_norm, max_relative * size) if size > 0 else max_norm
    if not norm <= limit:
        raise ReplyError(
            f"update norm {norm:.4g} is over the limit {limit:.4g} "
            f"(min of robust.max_update_norm and robust.max_relative_update x {size:.4g})"
        )
    return norm


def state_norm(state: Mapping[str, torch.Tensor]) -> float:
    """``||X||``: the Frobenius norm over all tensors of a state, accumulated in float64."""
    total = 0.0
    for tensor in state.values():
        t = tensor.detach().to(torch.float64)
        total += float(torch.sum(t * t))
    return math.sqrt(total)


def lora_pairs(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{module: (A name, B name)}`` for every ``<module>.lora_A.weight`` with its ``lora_B``."""
    found: dict[str, dict[str, str]] = {}
    for name in names:
        match = FACTOR_NAME.match(name)
        if match:
            found.setdefault(match["module"], {})[match["factor"]] = name
    return {m: (f["A"], f["B"]) for m, f in sorted(found.items()) if f.keys() == {"A", "B"}}


def check_lora_products(factors: Mapping[str, torch.Tensor]) -> None:
    r"""Raise :class:`ReplyError` unless every module's ``B A`` is finite in float32.

    Without forming ``B A`` (d x k): each entry and each partial sum of ``(B A)_{ij} = \sum_l
    B_{il} A_{lj}`` is at most ``||B_i|| ||A_{:j}|| <= ||B||_F ||A||_F`` in magnitude
    (Cauchy-Schwarz), so ``||B||_F ||A||_F`` (in float64) below half of float32's maximum
    guarantees a finite product, and the margin leaves room for the LoRA scale and the base weight.
    Costs ``O(r (d + k))`` per module.
    """
    for module, (a_name, b_name) in lora_pairs(list(factors)).items():
        a = factors[a_name].detach().to(torch.float64)
        b = factors[b_name].detach().to(torch.float64)
        bound = float(torch.linalg.vector_norm(a)) * float(torch.linalg.vector_norm(b))
        if not bound < FLOAT32_MAX / 2:
            raise ReplyError(
                f"module {module!r}: ||B|| ||A|| = {bound:.4g}, B A could overflow float32"
            )


def bounded_weights(
    claims: Sequence[float], max_num_examples: float, median_multiple: float
) -> list[float]:
    """Each reply's aggregation weight: its claimed example count, capped.

    ``w_k = min(n_k, max_num_examples, median_multiple * median_j n_j)``; the median term applies
    with >= 3 replies (with fewer there is no majority whose median an attacker cannot move).
    Claims must already be finite and > 0 (see :func:`validate_factors`). No reply can then claim
    its way over the others, and the weights' sum is exact: capped integers stay far below 2**53.

    Examples
    --------
    >>> bounded_weights([10, 20, 1e12], max_num_examples=1e6, median_multiple=10)
    [10.0, 20.0, 200.0]
    >>> bounded_weights([10, 1e12], max_num_examples=1e6, median_multiple=10)
    [10.0, 1000000.0]
    """
    cap = float(max_num_examples)
    if len(claims) >= 3:
        cap = min(cap, median_multiple * float(np.median(np.asarray(claims, np.float64))))
    return [min(float(n), cap) for n in claims]
