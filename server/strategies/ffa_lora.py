"""FFA-LoRA on Flower: ``lora_A`` frozen from the seed, FedIT's average of ``lora_B``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedft.algorithms.ffa_lora import ffa_aggregate
from fedft.algorithms.robust import coordinate_median, trimmed_mean
from server.replies import ClientUpdate
from server.strategies import register_strategy
from server.strategies.fedit import FedIT


@register_strategy("ffa_lora")
class FfaLora(FedIT):
    """Clients train ``lora_B`` only; the server averages it and keeps ``lora_A`` (FFA-LoRA).

    Sun et al., ICLR 2024, arXiv 2403.12313 (:mod:`fedft.algorithms.ffa_lora`). ``lora_A`` is the
    adapter every process initialises from ``run.seed``; a reply whose ``lora_A`` is not exactly
    what its node was sent is refused (:attr:`server.replies.ReplyCodec.frozen_a`).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replies.frozen_a = True

    def aggregate_factors(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[Mapping[str, torch.Tensor], dict[str, float]]:
        """``lora_A`` kept, ``lora_B`` averaged (or its median / trimmed mean, as FedIT)."""
        states = [u.factors for u in updates]
        if self.robust.aggregator == "median":
            merged = coordinate_median(states)
        elif self.robust.aggregator == "trimmed_mean":
            merged = trimmed_mean(states, self.robust.trim_fraction)
        else:
            return ffa_aggregate(states, [u.num_examples for u in updates], self.global_factors), {}
        return ffa_aggregate([merged], [1.0], self.global_factors), {}
