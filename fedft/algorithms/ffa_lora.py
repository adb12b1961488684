"""FFA-LoRA: A frozen at its seeded initial value, only B trained and averaged.

FFA-LoRA (Sun et al., ICLR 2024, "Improving LoRA in Privacy-preserving Federated Learning",
arXiv 2403.12313) keeps every module's ``A`` fixed at the initial value all parties draw from the
run's seed and trains ``B`` only. With a shared ``A``, FedAvg of ``B`` is exact::

    B_bar = sum_k p_k B_k,   B_bar A = sum_k p_k B_k A

so there is no aggregation residual for LoRA-FAIR to correct. With heterogeneous ranks, client
``k`` trains the first ``r_k`` rows of the server's ``A`` (``A[:r_k]``) and its zero-padded
``[B_k, 0]`` gives ``[B_k, 0] A = B_k A[:r_k]``, so the average stays exact.

A reply is accepted only if its ``A`` factors are bit for bit the ones it was sent
(:func:`check_frozen_a`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedft.algorithms.fedavg import normalized_weights, weighted_sum
from fedft.errors import ReplyError
from fedft.factors import FACTOR_NAME


def is_frozen(name: str) -> bool:
    """Whether ``name`` is a ``<module>.lora_A.weight`` factor (frozen in FFA-LoRA)."""
    match = FACTOR_NAME.match(name)
    return match is not None and match["factor"] == "A"


def check_frozen_a(reply: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`ReplyError` unless every ``lora_A`` of ``reply`` equals ``start``'s exactly."""
    for name, tensor in reply.items():
        if is_frozen(name) and not torch.equal(tensor, start[name]):
            raise ReplyError(f"reply: tensor {name!r} changed, but FFA-LoRA keeps lora_A frozen")


def ffa_aggregate(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    start: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``A`` from ``start`` (the frozen factors), every other tensor ``sum_k p_k X_k``.

    Parameters
    ----------
    states : Sequence[Mapping[str, torch.Tensor]]
        The clients' factor states, all with ``start``'s names and shapes (zero-pad them first).
    weights : Sequence[float]
        Non-negative client weights, normalised here.
    start : Mapping[str, torch.Tensor]
        The round's global factors; their ``lora_A`` are kept.
    """
    p = normalized_weights(weights, len(states))
    return {
        name: start[name].clone()
        if is_frozen(name)
        else weighted_sum([state[name] for state in states], p)
        for name in states[0]
    }
