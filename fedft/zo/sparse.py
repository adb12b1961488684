r"""Sensitive sparse zo: perturb a fixed ~0.1 % of the weights, the rest frozen (or quantized).

Guo et al., 2024, "Zeroth-Order Fine-Tuning of LLMs with Extreme Sparsity" (arXiv 2406.02913):
the parameters with the largest squared gradient on pre-training-like data (a diagonal Fisher
estimate) carry most of a fine-tuning task's gradient, so SPSA over only those ``m`` of ``D``
weights (``m / D`` ~ 1e-3) estimates a useful direction with ``m``, not ``D``, degrees of noise:

.. math::

    S = \operatorname{top}_m \Big( \sum_{b=1}^{B} (\partial L_b / \partial W)^2 \Big), \qquad
    W' = W + P_S(\delta), \qquad \delta \in \mathbb{R}^m \text{ trained by SPSA}

The mask ``S`` (:class:`SparseMask`) is part of the run's state: the server builds it once
(:func:`sensitive_mask` on a public calibration text, or :func:`random_mask` from the run's seed),
sends it to every node once (:meth:`SparseMask.encode`, 4 bytes an index, counted in the
downlink), and announces its digest every round. A model gets ``delta`` as forward hooks on the
masked linear modules (:func:`install_`): ``y = x W^T + x P_S(\delta)^T``, so the base itself is
never written and may be int8 or nf4. The trainable state is ``{module + ".sparse_delta": delta}``
(zeros at round 0): the zo generator covers exactly the mask, module by module in zo order
(sorted names), within a module in increasing flat index (row-major ``(out, in)``), through the
same :func:`fedft.zo.rng.perturb_` / :func:`fedft.zo.rng.perturb_numpy_` as any trainable state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from fedft.errors import ZoError
from fedft.zo.mask import DELTA_SUFFIX as DELTA_SUFFIX  # re-exported: the torch-free home
from fedft.zo.mask import SparseMask as SparseMask

_SKIP = {"base_layer"}


def _owner(name: str) -> str:
    parts = [p for p in name.split(".") if p not in _SKIP]
    return parts[-1] if parts else ""


def masked_modules(model: torch.nn.Module, owners: Sequence[str]) -> dict[str, Any]:
    """The innermost linear modules (``in_features``/``out_features``, not LoRA) named ``owners``.

    A peft-wrapped ``q_proj`` gives its ``base_layer``; the names are the same on a float, int8
    or nf4 base, so every party finds the same modules.
    """
    chosen = set(owners)
    found: dict[str, Any] = {}  # linear modules of several classes (float, int8, nf4)
    for name, module in model.named_modules():
        if "lora_" in name or _owner(name) not in chosen:
            continue
        if not (hasattr(module, "in_features") and hasattr(module, "out_features")):
            continue
        if getattr(module, "base_layer", None) is not None:
            continue  # the peft wrapper: its base_layer is the linear map
        found[name] = module
    return dict(sorted(found.items()))


def module_shapes(model: torch.nn.Module, owners: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``{module: (out_features, in_features)}`` of :func:`masked_modules`."""
    return {
        name: (int(m.out_features), int(m.in_features))
        for name, m in masked_modules(model, owners).items()
    }


def mask_size(total: int, fraction: float) -> int:
    """``m = max(1, round(fraction x D))``."""
    return max(1, min(total, round(fraction * total)))


def _split(shapes: Mapping[str, tuple[int, int]], flat: np.ndarray) -> SparseMask:
    """Global sorted indices over the modules in order -> the mask of the modules they hit.

    A module with no masked entry is left out (an empty tensor has no place in a state).
    """
    bounds = np.cumsum([0, *(r * c for r, c in shapes.values())])
    kept = []
    for (name, shape), lo, hi in zip(shapes.items(), bounds[:-1], bounds[1:], strict=True):
        local = (flat[(flat >= lo) & (flat < hi)] - lo).astype(np.int64)
        if local.size:
            kept.append((name, shape, local))
    return SparseMask(*(tuple(column) for column in zip(*kept, strict=True)))


def random_mask(shapes: Mapping[str, tuple[int, int]], fraction: float, seed: int) -> SparseMask:
    """``m`` entries drawn uniformly without replacement (numpy PCG64 from ``seed``)."""
    shapes = dict(sorted(shapes.items()))
    total = sum(r * c for r, c in shapes.values())
    picked = np.sort(np.random.default_rng(seed).choice(total, mask_size(total, fraction), False))
    return _split(shapes, picked)


def mask_from_scores(scores: Mapping[str, torch.Tensor], fraction: float) -> SparseMask:
    """The global top ``m`` entries of ``scores`` (one ``(out, in)`` tensor per module).

    Ties are broken towards the lower global index (module order, then flat index), so the same
    scores always give the same mask.
    """
    names = sorted(scores)
    shapes = {n: (int(scores[n].shape[0]), int(scores[n].shape[1])) for n in names}
    flat = torch.cat([scores[n].detach().reshape(-1).to(torch.float32) for n in names])
    m = mask_size(flat.numel(), fraction)
    threshold = torch.topk(flat, m, sorted=True).values[-1]
    above = torch.nonzero(flat > threshold).view(-1)
    ties = torch.nonzero(flat == threshold).view(-1)[: m - above.numel()]
    picked = np.sort(torch.cat([above, ties]).numpy().astype(np.int64))
    return _split(shapes, picked)


def sensitive_scores(
    model: torch.nn.Module, owners: Sequence[str], batches: Iterable[Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    r"""``\sum_b (\partial L_b / \partial W)^2`` per masked weight (diagonal Fisher).

    The model must hold its base in floating point; its ``requires_grad`` flags are restored.
    """
    modules = masked_modules(model, owners)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    weights = {name: m.weight for name, m in modules.items()}
    for name, w in weights.items():
        if not w.is_floating_point() or w.dim() != 2:
            raise ZoError(f"sparse mask: {name} has no float (out, in) weight to score")
        w.requires_grad_(True)
    scores = {name: torch.zeros(w.shape, dtype=torch.float32) for name, w in weights.items()}
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            for w in weights.values():
                w.grad = None
            model(**batch).loss.backward()
            for name, w in weights.items():
                scores[name] += w.grad.detach().to(torch.float32).square()
    finally:
        for name, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(flags[name])
        model.train(was_training)
    return scores


class _DeltaHook:
    """``y += x[..., cols] * delta`` summed into ``y[..., rows]``: ``x P_S(delta)^T``."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, delta: torch.Tensor) -> None:
        self.rows, self.cols, self.delta = rows, cols, delta

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        extra = x[..., self.cols] * self.delta.to(x.dtype)  # (..., m)
        return output.index_add(-1, self.rows, extra.to(output.dtype))


@dataclass
class InstalledMask:
    """A mask installed on a model: its digest, the delta tensors (by state name), the hooks."""

    digest: str
    deltas: dict[str, torch.Tensor]
    handles: list


def installed(model: torch.nn.Module) -> InstalledMask | None:
    """The mask installed on ``model`` by :func:`install_`, if any."""
    return model.__dict__.get("fedft_sparse")


def install_(model: torch.nn.Module, mask: SparseMask) -> InstalledMask:
    """Hook ``delta`` (zeros) onto the masked modules of ``model``; a no-op if already installed.

    Raises
    ------
    ZoError
        If another mask is installed, or the model's modules do not match the mask's shapes.
    """
    digest = mask.digest()
    current = installed(model)
    if current is not None:
        if current.digest != digest:
            raise ZoError(
                f"sparse mask: the model holds mask {current.digest[:12]}, not {digest[:12]}"
            )
        return current
    modules = masked_modules(model, [_owner(n) for n in mask.modules])
    deltas, handles = {}, []
    for name, (rows, cols), idx in zip(mask.modules, mask.shapes, mask.indices, strict=True):
        module = modules.get(name)
        if module is None or (module.out_features, module.in_features) != (rows, cols):
            raise ZoError(f"sparse mask: the model has no {rows} x {cols} linear module {name!r}")
        delta = torch.zeros(int(idx.size), dtype=torch.float32)
        flat = torch.from_numpy(idx)
        hook = _DeltaHook(flat // cols, flat % cols, delta)
        handles.append(module.register_forward_hook(hook))
        deltas[name + DELTA_SUFFIX] = delta
    out = InstalledMask(digest, deltas, handles)
    model.__dict__["fedft_sparse"] = out
    return out


def save_sparse_weights(mask: SparseMask, state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Write the trained deltas with their positions: ``<module>.indices`` and ``<module>.delta``.

    The merged weight of a module is ``W.view(-1)[indices] += delta`` (row-major ``(out, in)``).
    """
    out = {}
    for name, idx in zip(mask.modules, mask.indices, strict=True):
        base = name.removeprefix("base_model.model.").removesuffix(".base_layer")
        out[base + ".indices"] = torch.from_numpy(idx.copy())
        out[base + ".delta"] = state[name + DELTA_SUFFIX].detach().cpu().contiguous()
    save_file(out, str(path))
    return path
