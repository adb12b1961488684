"""FlexLoRA on Flower: FedIT's screened replies, aggregated as a truncated SVD of the update."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedft.algorithms.fedavg import normalized_weights
from fedft.algorithms.hetero_lora import flexlora_aggregate, state_rank
from server.replies import ClientUpdate
from server.strategies import register_strategy
from server.strategies.fedit import FedIT


@register_strategy("flexlora")
class FlexLora(FedIT):
    """The global factors are ``sum_k p_k B_k A_k`` truncated at the server's rank (FlexLoRA).

    Bai et al., 2024, "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and
    Client Resources", arXiv 2402.11505; the maths is
    :func:`fedft.algorithms.hetero_lora.flexlora_aggregate` (SVD from thin QR factors of the
    stacked factors). A client of rank ``r_k`` is sent the leading ``r_k`` components
    (:meth:`FedIT.node_starts`), which are the rank-``r_k`` truncated SVD of the same update. Each
    round's metrics gain ``flexlora.kept_energy``: the mean over modules of the share of
    ``||sum_k p_k B_k A_k||_F^2`` the server's rank keeps.
    """

    def aggregate_factors(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[Mapping[str, torch.Tensor], dict[str, float]]:
        """The truncated SVD, at the global factors' rank, of the clients' weighted update."""
        p = normalized_weights([u.num_examples for u in updates])
        rank = state_rank(self.global_factors)
        factors, kept = flexlora_aggregate([u.factors for u in updates], p, rank)
        return factors, {"flexlora.kept_energy": kept}
