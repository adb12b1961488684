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

import torch


def normalized_weights(weights: Sequence[float]) -> list[float]:
    """Return ``weights / sum(weights)``, checking they are finite, >= 0 and not all zero.

    Examples
    --------
    >>> normalized_weights([1, 3])
    [0.25, 0.75]
    """
    if not weights:
        raise ValueError("no client weights: nothing to aggregate")
    if any(not (w >= 0 and w < float("inf")) for w in weights):
        raise ValueError(f"client weights must be finite and >= 0, got {list(weights)}")
    total = math.fsum(float(w) for w in weights)  # correctly rounded: exact for integer counts
    if total <= 0:
        raise ValueError("client weights sum to 0 (every client reported 0 examples)")
    return [float(w) / total for w in weights]


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
    out: dict[str, torch.Tensor] = {}
    for name, first in states[0].items():
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for p_k, state in zip(p, states, strict=True):
            acc += p_k * state[name].to(torch.float64)
        out[name] = acc.to(first.dtype)
    return out
