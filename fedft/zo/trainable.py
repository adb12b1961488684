"""What a zeroth-order run trains: the LoRA factors, or all weights of chosen base modules.

``zo.trainable_modules = []`` (default) perturbs the LoRA factors, and the run's output is a PEFT
adapter. ``zo.trainable_modules = ["lm_head"]`` (say) perturbs every weight of the modules whose
name ends with one of those names (MeZO's full-parameter mode, on a chosen part of the model); the
run's output is then those weights, under the base model's own parameter names.

A *trainable state* is a flat ``dict[str, torch.Tensor]`` either way, so seeds, records, replay,
checkpoints and the wire do not care which it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file

from fedft.adapters import factor_params, get_factors, set_factors_
from fedft.config import Scenario
from fedft.errors import ConfigError, ReplyError
from fedft.factors import check_same_layout
from fedft.models import initial_factors
from fedft.zo.sparse import installed

_SKIP = {"weight", "bias", "base_layer"}


def _owner(name: str) -> str:
    """The module a parameter belongs to: ``...q_proj.base_layer.weight`` -> ``q_proj``."""
    parts = [p for p in name.split(".") if p not in _SKIP]
    return parts[-1] if parts else ""


def _module_weights(model: PeftModel, modules: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    chosen = set(modules)
    return {
        name: param
        for name, param in model.named_parameters()
        if "lora_" not in name and _owner(name) in chosen
    }


def trainable_state(model: PeftModel, modules: Sequence[str]) -> dict[str, torch.Tensor]:
    """Copy out the trainable tensors (float32, CPU)."""
    sparse = installed(model)
    if sparse is not None:  # zo.sparse_fraction: the mask's deltas (fedft.zo.sparse)
        return {k: v.detach().clone() for k, v in sparse.deltas.items()}
    if not modules:
        return get_factors(model)
    weights = _module_weights(model, modules)
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in weights.items()}


def trainable_params(model: PeftModel, names: list[str], modules: Sequence[str]) -> list:
    """The live tensors named ``names``, in that order (the perturbation layout)."""
    sparse = installed(model)
    if sparse is not None:
        if sorted(names) != sorted(sparse.deltas):
            raise ReplyError("trainable state: the names are not the sparse mask's modules")
        return [sparse.deltas[n] for n in names]
    if not modules:
        return factor_params(model, names)
    weights = _module_weights(model, modules)
    return [weights[n] for n in names]


def set_trainable_(
    model: PeftModel, state: Mapping[str, torch.Tensor], modules: Sequence[str]
) -> None:
    """Copy ``state`` into the model's trainable tensors (names and shapes checked)."""
    sparse = installed(model)
    if sparse is not None:
        check_same_layout(state, sparse.deltas, "trainable state")
        with torch.no_grad():
            for name, tensor in state.items():
                sparse.deltas[name].copy_(tensor.to(torch.float32))
        return
    if not modules:
        set_factors_(model, state)
        return
    weights = _module_weights(model, modules)
    check_same_layout(state, {k: v.detach() for k, v in weights.items()}, "trainable state")
    with torch.no_grad():
        for name, tensor in state.items():
            weights[name].copy_(tensor.to(weights[name].dtype))


def initial_state(model: PeftModel, modules: Sequence[str]) -> dict[str, torch.Tensor]:
    """Round 0's trainable state, the same in every process.

    For module weights it is captured the first time it is asked for, before any zo step has
    touched the (cached, shared) model; zo clients put the weights back after each round. With a
    sparse mask installed it is the mask's zero deltas.
    """
    sparse = installed(model)
    if sparse is not None:
        return {k: torch.zeros_like(v) for k, v in sparse.deltas.items()}
    if not modules:
        return initial_factors(model)
    key = tuple(sorted(modules))
    cache = model.__dict__.setdefault("fedft_initial_modules", {})
    if key not in cache:
        cache[key] = trainable_state(model, modules)
    return {k: v.clone() for k, v in cache[key].items()}


def save_module_weights(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Write trained module weights under the base model's names (``lm_head.weight``, ...)."""
    renamed = {}
    for name, tensor in state.items():
        base = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        renamed[base] = tensor.detach().cpu().contiguous()
    save_file(renamed, str(path))
    return path


def check_trained_modules(model: PeftModel, scenario: Scenario) -> None:
    """Raise :class:`ConfigError` unless every name of ``scenario.trained_modules`` owns weights.

    The key is the strategy's table's (``zo.trainable_modules``, ``ferret.trainable_modules``).
    """
    modules = scenario.trained_modules
    owners = {_owner(name) for name in _module_weights(model, modules)}
    missing = [m for m in modules if m not in owners]
    if missing:
        key = f"{scenario.federation.spec.settings}.trainable_modules"
        raise ConfigError(key, f"the model has no module with weights named {missing[0]!r}")
