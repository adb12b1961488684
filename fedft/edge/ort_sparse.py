r"""Sensitive sparse zo on ONNX Runtime: the mask's deltas written into fed base weights.

A bundle exported for a scenario with ``zo.sparse_fraction > 0`` declares the weights of
``zo.sparse_modules`` overridable inputs of its forward graph (their stored values stay the
defaults: :func:`fedft.edge.graph.weights_as_overridable_inputs`). :class:`SparseForward` keeps a
working float32 copy of each masked module's weight and, before every forward pass, writes

.. math::

    W'_{S} = W_{S} + \delta, \qquad W'_{\bar S} = W_{\bar S}

(``S`` the mask's flat row-major indices of that module, Guo et al., arXiv 2406.02913), then feeds
``W'``. The torch client adds the same ``P_S(\delta)`` through forward hooks
(:mod:`fedft.zo.sparse`); the losses agree to float32 rounding. The SPSA step itself perturbs the
deltas in the mask's zo order with :func:`fedft.zo.rng.perturb_numpy_` (torch's bits), so the
node's state is what the server rebuilds from its records. No torch is imported.

Cost: one float32 copy of every masked module's weight (held besides the session's own), and
``m`` scattered writes a forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from fedft.edge.errors import EdgeError
from fedft.edge.ort_zo import Batch, ForwardModel
from fedft.zo.mask import DELTA_SUFFIX, SparseMask


def _initializers(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    wanted = set(names)
    graph = onnx.load(str(path)).graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.name in wanted}


class SparseForward:
    """A :class:`~fedft.edge.ort_zo.ForwardModel` whose masked weights are ``W + P_S(delta)``.

    Parameters
    ----------
    model : ForwardModel
        The bundle's forward graph, exported with ``zo.sparse_fraction > 0``.
    path : Path
        Its file (the masked weights' stored values are read from it once).
    mask : SparseMask
        The run's mask.
    factors : Mapping[str, np.ndarray]
        The LoRA factors the graph takes (held fixed: the initial adapter, as on torch).

    Raises
    ------
    EdgeError
        If the graph does not take a masked weight as an input, or its shape is not the mask's.
    """

    def __init__(
        self,
        model: ForwardModel,
        path: Path,
        mask: SparseMask,
        factors: Mapping[str, np.ndarray],
    ) -> None:
        self.model, self.mask = model, mask
        self.factors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in factors.items()}
        overridable = {i.name for i in model.session.get_overridable_initializers()}
        names = [module + ".weight" for module in mask.modules]
        missing = [n for n in names if n not in overridable]
        if missing:
            raise EdgeError(
                f"{path}: the forward graph does not take {missing[0]!r} as an input "
                "(a bundle exported without zo.sparse_fraction): rebuild the edge bundle"
            )
        stored = _initializers(path, names)
        self.weights: dict[str, np.ndarray] = {}
        self._base: dict[str, np.ndarray] = {}
        for module, shape, idx in zip(mask.modules, mask.shapes, mask.indices, strict=True):
            weight = np.array(stored[module + ".weight"], dtype=np.float32, order="C")  # writable
            if weight.shape != shape:
                raise EdgeError(f"{path}: {module} is {weight.shape}, the sparse mask's {shape}")
            self.weights[module + ".weight"] = weight
            self._base[module + DELTA_SUFFIX] = weight.reshape(-1)[idx].copy()

    def _write(self, deltas: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for module, idx in zip(self.mask.modules, self.mask.indices, strict=True):
            name = module + DELTA_SUFFIX
            self.weights[module + ".weight"].reshape(-1)[idx] = self._base[name] + deltas[name]
        return self.weights

    def loss(self, factors: Mapping[str, np.ndarray], batch: Batch) -> float:
        """Mean loss of a batch with the deltas ``factors`` (by state name) on the base."""
        return self.model.loss(self.factors, batch, self._write(factors))

    def logits_and_loss(
        self, factors: Mapping[str, np.ndarray], batch: Batch
    ) -> tuple[np.ndarray, float]:
        """Logits and mean loss of a batch with the deltas ``factors`` on the base."""
        return self.model.logits_and_loss(self.factors, batch, self._write(factors))
