"""LoRA-FAIR over whole adapter states: pair each module's factors, correct them, report.

:func:`lora_fair_aggregate` applies :func:`fedft.algorithms.lora_fair.correct_module` to every
``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` pair of the clients' peft state dicts and
averages any other tensor plainly (Bian et al., 2024, arXiv 2411.14961).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedft.algorithms.fedavg import weighted_sum
from fedft.algorithms.hetero_lora import pad_state
from fedft.algorithms.lora_fair import (
    DEFAULT_CONFIG,
    LoraFairConfig,
    LoraFairError,
    ModuleSummary,
    client_weights,
    correct_module,
)
from fedft.factors import FACTOR_NAME


@dataclass(frozen=True)
class LoraFairReport:
    """Per-module summaries of one LoRA-FAIR aggregation and their totals."""

    modules: dict[str, ModuleSummary]
    cos_before: float
    cos_after: float
    solve_s: float
    diverged_modules: int

    def to_metrics(self) -> dict[str, float]:
        """Return the flat ``lora_fair.*`` metrics (means over modules, total seconds, count)."""
        return {
            "lora_fair.cos_before": self.cos_before,
            "lora_fair.cos_after": self.cos_after,
            "lora_fair.solve_s": self.solve_s,
            "lora_fair.diverged_modules": float(self.diverged_modules),
        }


def lora_fair_aggregate(
    client_factors: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    config: LoraFairConfig = DEFAULT_CONFIG,
) -> tuple[dict[str, torch.Tensor], LoraFairReport]:
    """Aggregate peft LoRA state dicts with LoRA-FAIR, module by module.

    Keys ``<module>.lora_A.weight`` and ``<module>.lora_B.weight`` are paired by ``<module>`` and
    corrected with :func:`correct_module`; every other key (bias, ``modules_to_save``, ...) is the
    plain weighted average, in its input dtype.

    Parameters
    ----------
    client_factors : Sequence[Mapping[str, torch.Tensor]]
        One flat state dict per client, all with the same keys.
    weights : Sequence[float]
        Non-negative client weights, normalised here.
    config : LoraFairConfig
        Solver hyper-parameters, shared by all modules.

    Returns
    -------
    tuple[dict[str, torch.Tensor], LoraFairReport]
        The new global state dict (same keys and shapes; LoRA factors float32) and the report.

    Raises
    ------
    LoraFairError
        A key is missing for some client, a module lacks its A or B factor, a factor key has
        another form (e.g. peft's in-model ``lora_A.default.weight``), shapes or ranks disagree,
        a value is not finite, or no LoRA factor pair is present.
    """
    p = client_weights(weights, len(client_factors))
    modules, plain = _split_keys(client_factors)
    out: dict[str, torch.Tensor] = {}
    summaries: dict[str, ModuleSummary] = {}
    for module in modules:
        key_a, key_b = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        a_list = [state[key_a] for state in client_factors]
        b_list = [state[key_b] for state in client_factors]
        fix = correct_module(a_list, b_list, p, config, name=module)
        out[key_a], out[key_b] = fix.a_bar, fix.b_corrected
        summaries[module] = fix.summary()
    for key in plain:
        out[key] = _plain_average(key, [state[key] for state in client_factors], p)
    out = {key: out[key] for key in client_factors[0]}  # keep the clients' key order
    values = list(summaries.values())
    report = LoraFairReport(
        modules=summaries,
        cos_before=math.fsum(s.cos_before for s in values) / len(values),
        cos_after=math.fsum(s.cos_after for s in values) / len(values),
        solve_s=math.fsum(s.solve_s for s in values),
        diverged_modules=sum(s.diverged for s in values),
    )
    return out, report


def _split_keys(
    client_factors: Sequence[Mapping[str, torch.Tensor]],
) -> tuple[list[str], list[str]]:
    """Return (LoRA module names, other keys); every client must hold the same keys."""
    keys = list(client_factors[0])
    for i, state in enumerate(client_factors[1:], start=1):
        missing = [key for key in keys if key not in state]
        extra = [key for key in state if key not in client_factors[0]]
        if missing or extra:
            wrong = missing[0] if missing else extra[0]
            where = "missing for" if missing else "only in"
            raise LoraFairError(f"`{wrong}` is {where} client {i} (client 0 defines the keys)")
    factors: dict[str, set[str]] = {}
    plain = []
    for key in keys:
        match = FACTOR_NAME.match(key)
        if match is not None:
            factors.setdefault(match["module"], set()).add(match["factor"])
        elif ".lora_A." in key or ".lora_B." in key:
            raise LoraFairError(f"`{key}` is not named `<module>.lora_A.weight` / `.lora_B.weight`")
        else:
            plain.append(key)
    for module, found in factors.items():
        if found != {"A", "B"}:
            lacking = "lora_B" if "A" in found else "lora_A"
            raise LoraFairError(f"`{module}` has no `{lacking}.weight` factor")
    if not factors:
        raise LoraFairError("no `<module>.lora_A.weight` / `.lora_B.weight` pair to aggregate")
    return list(factors), plain


def _plain_average(key: str, tensors: Sequence[torch.Tensor], p: Sequence[float]) -> torch.Tensor:
    """Return ``sum_k p_k X_k`` (:func:`~fedft.algorithms.fedavg.weighted_sum`), checked first."""
    first = tensors[0]
    for i, tensor in enumerate(tensors):
        if tensor.shape != first.shape:
            raise LoraFairError(
                f"`{key}`: client {i} has shape {tuple(tensor.shape)}, client 0 has "
                f"{tuple(first.shape)}"
            )
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise LoraFairError(f"`{key}`: client {i} has non-floating or non-finite values")
    return weighted_sum(tensors, p)


def lora_fair_hetero_aggregate(
    client_factors: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    rank: int,
    config: LoraFairConfig = DEFAULT_CONFIG,
) -> tuple[dict[str, torch.Tensor], LoraFairReport]:
    """LoRA-FAIR for clients of different ranks: zero-pad to the server rank, then correct.

    fedft's definition (no paper has one): every client's factors are zero-padded to the server
    rank ``R`` (:func:`fedft.algorithms.hetero_lora.pad_state`), then :func:`lora_fair_aggregate`
    runs unchanged. Why it is sound: padding keeps each product (``[B_k, 0] [A_k; 0] = B_k A_k``),
    so the solve's target ``sum_k p_k pad(B_k) pad(A_k)`` is exactly the ideal update ``dW``, and
    ``A_bar`` is HetLoRA's zero-padded average, the start all clients share. The correction then
    does what it does with one rank: it moves ``B_bar`` so that ``B' A_bar`` points along ``dW``,
    ``cos_after >= cos_before``; clients of rank ``r_k < R`` start from the first ``r_k``
    components of ``(A_bar, B')``. With one rank it is :func:`lora_fair_aggregate` exactly.
    (A FlexLoRA reduction first would leave nothing to correct: its truncated SVD already is the
    rank-``R`` factorisation closest to ``dW``, and with ``A`` fixed to its ``V^T`` the best ``B``
    is its ``U S``.)
    """
    padded = [pad_state(state, rank) for state in client_factors]
    return lora_fair_aggregate(padded, weights, config)
