"""FLoRA on Flower: stack the clients' factors, merge them into the base, start a fresh LoRA."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from peft import PeftModel
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from fedft.algorithms.fedavg import normalized_weights
from fedft.algorithms.hetero_lora import flora_accumulate, lowrank_svd, module_pairs, state_rank
from fedft.config import Scenario
from fedft.flower_records import MERGED_KEY, factors_to_record
from fedft.merged_base import merge_delta_
from fedft.models import initial_factors, load_peft_model  # cached: the server's model
from server.replies import ClientUpdate
from server.strategies import register_strategy
from server.strategies.fedit import FedIT


@register_strategy("flora")
class Flora(FedIT):
    """Exact aggregation by stacking; the stack is merged into the base between rounds (FLoRA).

    Wang et al., NeurIPS 2024, "FLoRA: Federated Fine-Tuning Large Language Models with
    Heterogeneous Low-Rank Adaptations", arXiv 2409.05976. Every round:

    1. each client is sent the fresh LoRA (the run's initial factors, ``B = 0``, truncated to its
       rank) in ``arrays`` and the merged update ``(B_m, A_m)`` in ``merged``; it sets its base to
       ``W_0 + s B_m A_m`` (:func:`fedft.merged_base.merge_delta_`) and trains the fresh LoRA;
    2. the server stacks the replies and adds them to the merged factors exactly
       (:func:`fedft.algorithms.hetero_lora.flora_accumulate`): ``B_m A_m += sum_k p_k B_k A_k``;
       the global LoRA is the fresh one again.

    The merged factors are all the state: what the clients are sent is a function of them only, so
    the server's evaluation model and every client hold the same merged weights. They cost
    ``rank_m (d + k)`` float64 numbers a module down (``rank_m <= min(d, k)``, the rank of the
    merged update); each round's metrics gain ``flora.merged_rank`` (mean over modules). The run's
    adapter (``adapter/``) is the rank-``lora.rank`` truncated SVD of the merged update (the best
    approximation at the server's rank, ``flora.output_kept_energy`` of its energy kept): a standard
    PEFT folder at the server's rank, while the evaluations in ``metrics.jsonl`` are of the exact
    merged model.
    """

    def __init__(self, fresh: Mapping[str, torch.Tensor] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fresh = dict(fresh or {})
        self.merged: dict[str, torch.Tensor] = {}
        self.pending: dict[str, torch.Tensor] = {}

    @classmethod
    def from_scenario(cls, scenario: Scenario, **kwargs: Any) -> Flora:
        """FLoRA whose fresh LoRA is the run's initial adapter (built from ``run.seed``)."""
        model, _ = load_peft_model(scenario.model, scenario.lora, scenario.run.seed)
        return cls(fresh=initial_factors(model), **kwargs)

    def node_content(self, node: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """FedIT's content plus the merged update (``merged``, float64)."""
        content = super().node_content(node, arrays, config)
        content[MERGED_KEY] = factors_to_record(self.merged)
        return content

    def aggregate_factors(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[Mapping[str, torch.Tensor], dict[str, float]]:
        """Merge the round's stack; the next round starts from the fresh LoRA."""
        p = normalized_weights([u.num_examples for u in updates])
        self.pending = flora_accumulate(self.merged, [u.factors for u in updates], p)
        ranks, kept = [], []
        server_rank = state_rank(self.global_factors)
        for a_key, _ in module_pairs(self.pending).values():
            energy = self.pending[a_key].norm(dim=1) ** 4  # balanced SVD factors: s_i = ||A_i||^2
            ranks.append(energy.numel())
            kept.append(
                float(energy[:server_rank].sum() / energy.sum()) if energy.sum() > 0 else 1.0
            )
        fresh = self.fresh or {k: torch.zeros_like(v) for k, v in self.global_factors.items()}
        metrics = {
            "flora.merged_rank": sum(ranks) / max(len(ranks), 1),
            "flora.output_kept_energy": sum(kept) / max(len(kept), 1),
        }
        return dict(fresh), metrics

    def commit(self, server_round: int, updates: list[ClientUpdate]) -> None:
        """The round's merge is kept only once its aggregate passed its checks."""
        self.merged = self.pending

    def prepare_model(self, model: PeftModel) -> None:
        """Set the server's model's base to the merged weights before it is evaluated."""
        merge_delta_(model, self.merged)

    def output_factors(self, factors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The adapter to write: the merged update's truncated SVD at the server's rank."""
        rank = state_rank(dict(factors))
        out = dict(factors)
        for a_key, b_key in module_pairs(self.merged).values():
            svd = lowrank_svd([self.merged[a_key]], [self.merged[b_key]], [1.0])
            a, b = svd.factors(rank)
            out[a_key], out[b_key] = a.float(), b.float()
        return out

    def state(self) -> dict:
        """The merged factors, as base64 safetensors (checkpoints are JSON)."""
        return {
            "merged": base64.b64encode(save_tensors(self.merged)).decode() if self.merged else ""
        }

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""
        text = state.get("merged", "")
        self.merged = dict(load_tensors(base64.b64decode(text))) if text else {}
