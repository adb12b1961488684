"""LoRA-FAIR on Flower: FedIT's validated replies, aggregated with the residual correction."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from fedft.algorithms.lora_fair_state import lora_fair_aggregate
from fedft.config import LoraFairConfig, Scenario
from server.replies import ClientUpdate
from server.strategies import register_strategy
from server.strategies.fedit import FedIT

log = logging.getLogger("fedft.server")


@register_strategy("lora_fair")
class LoraFair(FedIT):
    """Clients start each round from ``(A_bar, B_bar + dB*)`` (Bian et al., arXiv 2411.14961).

    Only :meth:`aggregate_factors` differs from :class:`FedIT`; the solve sees factors only, so it
    works whatever runtime the clients use. Each round's metrics gain ``lora_fair.cos_before``,
    ``lora_fair.cos_after``, ``lora_fair.solve_s`` and ``lora_fair.diverged_modules``.
    """

    def __init__(self, solver: LoraFairConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.solver = solver

    @classmethod
    def from_scenario(cls, scenario: Scenario, **kwargs: Any) -> LoraFair:
        """LoRA-FAIR with the scenario's ``[lora_fair]`` solver settings."""
        return cls(solver=scenario.lora_fair, **kwargs)

    def aggregate_factors(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[Mapping[str, torch.Tensor], dict[str, float]]:
        """Average A and B, then correct B so that ``B' A_bar`` points along ``sum p_k B_k A_k``.

        With ``[privacy]`` (local mode only) the factors are the clients' noised ones and every
        ``p_k`` is equal: the correction is post-processing of private releases.
        """
        factors, report = lora_fair_aggregate(
            [u.factors for u in updates], [u.num_examples for u in updates], self.solver
        )
        if report.diverged_modules:
            log.warning(
                "round %d: LoRA-FAIR diverged on %d modules; they keep the plain averages",
                server_round,
                report.diverged_modules,
            )
        return factors, report.to_metrics()
