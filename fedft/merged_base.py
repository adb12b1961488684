"""FLoRA's merged base: ``W = W_0 + s B_m A_m`` in a live peft model, the same in every process.

FLoRA (Wang et al., NeurIPS 2024, arXiv 2409.05976) merges each round's stacked adapter into the
base weights and starts a fresh LoRA. fedft never ships base weights: the server keeps the merged
update as factors ``(B_m, A_m)`` (:func:`fedft.algorithms.hetero_lora.flora_accumulate`) and sends
them; every process (the server for evaluation, each client before it trains) sets each LoRA
module's base weight to ``W_0 + s B_m A_m`` from the pristine ``W_0`` it loaded, with the module's
LoRA scale ``s = alpha / r`` (the same for every rank: :meth:`fedft.config.Scenario.lora_for`),
computed in float64 and rounded once to the base's dtype. Server and clients so hold the same
merged weights, whatever was merged before in that process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from peft import PeftModel

from fedft.algorithms.hetero_lora import module_pairs

_PRISTINE = "fedft_pristine_base"  # model attribute: module path -> W_0, saved at the first merge


def merge_delta_(model: PeftModel, merged: Mapping[str, torch.Tensor]) -> None:
    """Set every LoRA module's base weight to ``W_0 + s B_m A_m`` (``merged`` empty: ``W_0``).

    Parameters
    ----------
    model : PeftModel
        A float (not quantized) base with LoRA.
    merged : Mapping[str, torch.Tensor]
        ``<module>.lora_A.weight`` / ``.lora_B.weight`` pairs of any rank, named as the model's
        adapter state.
    """
    pristine: dict[str, torch.Tensor] = model.__dict__.setdefault(_PRISTINE, {})
    pairs = module_pairs(merged)
    adapter = model.active_adapter
    with torch.no_grad():
        for module in sorted(set(pairs) | set(pristine)):
            layer: Any = model.get_submodule(module)  # a peft LoraLayer
            if module not in pristine:
                _untie(model, layer)
            weight: torch.Tensor = layer.base_layer.weight
            base = pristine.setdefault(module, weight.detach().clone())
            if module not in pairs:
                weight.copy_(base)
                continue
            a_key, b_key = pairs[module]
            delta = merged[b_key].to(torch.float64) @ merged[a_key].to(torch.float64)
            delta = delta * float(layer.scaling[adapter])
            if getattr(layer, "fan_in_fan_out", False):
                delta = delta.T
            weight.copy_((base.to(torch.float64) + delta).to(weight.dtype))


def _untie(model: PeftModel, layer: Any) -> None:
    """Give ``layer`` (a peft LoraLayer) its own base weight if it is tied to the embeddings.

    FLoRA merges into that module (a tied ``lm_head``) only, not into the input embeddings.
    """
    weight = layer.base_layer.weight
    embeddings = model.get_input_embeddings()
    if embeddings is not None and weight.data_ptr() == embeddings.weight.data_ptr():
        layer.base_layer.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
