"""FedIT: weighted federated averaging of each LoRA factor (A and B separately).

FedIT (Zhang et al., 2024, "Towards Building the Federated GPT: Federated Instruction Tuning",
arXiv 2305.05644) applies FedAvg (McMahan et al., 2017, arXiv 1602.05629) to the LoRA factors:

    A_bar = sum_k p_k A_k,   B_bar = sum_k p_k B_k,   p_k = n_k / sum_j n_j

with n_k the client's number of training examples. Note that B_bar A_bar != sum_k p_k B_k A_k in
general; :mod:`fedft.algorithms.lora_fair` corrects that bias.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only weighted_sum needs torch (normalized_weights serves numpy devices too)
    import torch


def normalized_weights(weights: Sequence[float], count: int | None = None) -> list[float]:
    """Return ``p_k = w_k / sum_j w_j``, checking the weights are finite, >= 0 and not all zero.

    The one weight normaliser of fedft: FedIT's average, LoRA-FAIR's solve and the zo sum per seed
    all weigh their clients with it. The sum is :func:`math.fsum`, correctly rounded (exact for
    integer example counts).

    Parameters
    ----------
    weights : Sequence[float]
        One non-negative weight per client (e.g. its example count).
    count : int, optional
        The number of clients the weights are for; checked when given.

    Raises
    ------
    ValueError
        A weight is negative or not finite, they sum to 0, there are none, or not ``count``.

    Examples
    --------
    >>> normalized_weights([1, 3])
    [0.25, 0.75]
    """
    if count is not None and len(weights) != count:
        raise ValueError(f"{count} clients but {len(weights)} weights")
    if not weights:
        raise ValueError("no client weights: nothing to aggregate")
    for k, w in enumerate(weights):
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"weight of client {k} must be finite and >= 0, got {w!r}")
    total = math.fsum(float(w) for w in weights)
    if total <= 0:
        raise ValueError("client weights sum to 0 (every client reported 0 examples)")
    return [float(w) / total for w in weights]


def weighted_sum(tensors: Sequence[torch.Tensor], p: Sequence[float]) -> torch.Tensor:
    """Return ``sum_k p_k X_k``, accumulated in float64, in the first tensor's dtype.

    ``p`` is used as given (normalise it first with :func:`normalized_weights`).
    """
    import torch

    first = tensors[0]
    acc = torch.zeros(first.shape, dtype=torch.float64)
    for p_k, tensor in zip(p, tensors, strict=True):
        acc += p_k * tensor.to(torch.float64)
    return acc.to(first.dtype)


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Average every tensor of the client states with weights ``p_k`` (accumulated in float64).

    Parameters
    ----------
    states : Sequence[Mapping[str, torch.Tensor]]
        One factor state per client, all with the same names and shapes.
    weights : Sequence[float]
        Non-negative client weights (e.g. example counts); normalized here.

    Returns
    -------
    dict[str, torch.Tensor]
        ``sum_k p_k X_k`` for every name ``X``, in the first state's dtype.
    """
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} client states but {len(weights)} weights")
    p = normalized_weights(weights)
    return {name: weighted_sum([state[name] for state in states], p) for name in states[0]}
