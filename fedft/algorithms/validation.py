"""Checks a client's reply must pass before it may touch the global state."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedft.adapters import check_same_layout
from fedft.errors import ReplyError


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
    out = []
    for k, norm in enumerate(norms):
        others = np.delete(norms, k)
        others = others[np.isfinite(others)]
        if not math.isfinite(norm) or (others.size and norm > factor * np.median(others)):
            out.append(k)
    return out
