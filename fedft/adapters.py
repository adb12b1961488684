"""LoRA factor state in and out of a peft model, by peft's state-dict names.

A *factor state* is a flat ``dict[str, torch.Tensor]`` keyed exactly as in a saved PEFT adapter
(``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight``). The same names travel on
the wire and land in ``adapter_model.safetensors``, so the final adapter is a standard PEFT folder.
The state as plain data (names, layout check, digest; no peft) is :mod:`fedft.factors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict

from fedft.errors import ReplyError
from fedft.factors import FactorState, check_same_layout


def _parameter_map(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """Map adapter state-dict names to the live LoRA parameters of the active adapter."""
    adapter = model.active_adapter
    return {
        name.replace(f".{adapter}.", "."): param
        for name, param in model.named_parameters()
        if f".{adapter}." in name and "lora_" in name
    }


def get_factors(model: PeftModel) -> FactorState:
    """Copy the active adapter's LoRA factors out of ``model`` (float32, CPU)."""
    # The base stays frozen (lm_head or embeddings included): only LoRA factors are state.
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    return {name: t.detach().to("cpu", torch.float32).clone() for name, t in state.items()}


def factor_params(model: PeftModel, names: list[str]) -> list[torch.nn.Parameter]:
    """The live LoRA parameters named ``names``, in that order (a zeroth-order layout)."""
    params = _parameter_map(model)
    missing = [n for n in names if n not in params]
    if missing:
        raise ReplyError(f"factors: missing tensor {missing[0]!r}")
    return [params[n] for n in names]


def set_factors_(model: PeftModel, factors: Mapping[str, torch.Tensor]) -> None:
    """Copy ``factors`` into ``model``'s LoRA parameters in place.

    Raises
    ------
    ReplyError
        If a name is missing or unknown, or a shape differs; the model is left unchanged then.
    """
    params = _parameter_map(model)
    check_same_layout(factors, {k: p.detach() for k, p in params.items()}, "factors")
    with torch.no_grad():
        for name, tensor in factors.items():
            params[name].copy_(tensor.to(params[name].dtype))


def save_adapter(
    model: PeftModel, factors: Mapping[str, torch.Tensor], path: str | Path, base_ref: str
) -> Path:
    """Write ``factors`` as a standard PEFT adapter folder that ``PeftModel.from_pretrained`` loads.

    ``base_ref`` is recorded as ``base_model_name_or_path`` in ``adapter_config.json``.
    """
    set_factors_(model, factors)
    model.peft_config[model.active_adapter].base_model_name_or_path = base_ref
    out = Path(path)
    model.save_pretrained(str(out), save_embedding_layers=False)
    return out
