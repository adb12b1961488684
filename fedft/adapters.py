"""LoRA factor state in and out of a peft model, by peft's state-dict names.

A *factor state* is a flat ``dict[str, torch.Tensor]`` keyed exactly as in a saved PEFT adapter
(``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight``). The same names travel on
the wire and land in ``adapter_model.safetensors``, so the final adapter is a standard PEFT folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict

from fedft.errors import ReplyError

FactorState = dict[str, torch.Tensor]


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


def factors_digest(factors: Mapping[str, torch.Tensor]) -> int:
    """A 48-bit digest of names, shapes, dtypes and exact bits (fits a float64 metric exactly)."""
    digest = hashlib.sha256()
    for name in sorted(factors):
        tensor = factors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return int.from_bytes(digest.digest()[:6], "big")


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


def check_same_layout(
    got: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise :class:`ReplyError` unless ``got`` has exactly ``expected``'s names and shapes."""
    missing = sorted(set(expected) - set(got))
    if missing:
        raise ReplyError(f"{what}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    unknown = sorted(set(got) - set(expected))
    if unknown:
        raise ReplyError(f"{what}: unknown tensor {unknown[0]!r}")
    for name, tensor in expected.items():
        if tuple(got[name].shape) != tuple(tensor.shape):
            raise ReplyError(
                f"{what}: tensor {name!r} has shape {tuple(got[name].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )


def save_adapter(
    model: PeftModel, factors: Mapping[str, torch.Tensor], path: str | Path, base_ref: str
) -> Path:
    """Write ``factors`` as a standard PEFT adapter folder that ``PeftModel.from_pretrained`` loads.

    ``base_ref`` is recorded as ``base_model_name_or_path`` in ``adapter_config.json``.
    """
    set_factors_(model, factors)
    model.peft_config[model.active_adapter].base_model_name_or_path = base_ref
    out = Path(path)
    model.save_pretrained(out, save_embedding_layers=False)
    return out
