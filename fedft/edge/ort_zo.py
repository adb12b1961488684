"""Forward-only ONNX Runtime: the LoRA factors as graph inputs, SPSA steps and evaluation.

The bundle's ``forward_model.onnx`` takes ``input_ids``, ``attention_mask``, ``labels`` and every
LoRA factor (by peft state-dict name) as inputs and returns ``logits`` and the causal-LM ``loss``.
It runs in a plain ``onnxruntime.InferenceSession``: no training runtime, no torch model, memory at
inference level. The zeroth-order step is :func:`fedft.zo.step.spsa_step_numpy_`, the one SPSA step
over :func:`fedft.zo.rng.perturb_numpy_` (bit-identical to :func:`fedft.zo.rng.perturb_`), so its
records are interchangeable with the torch zo client's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedft.data.encode import IGNORE_INDEX, EncodedDataset
from fedft.edge.errors import EdgeError
from fedft.eval_result import EvalResult
from fedft.wire.order import in_zo_order
from fedft.zo.seeds import ZoError, ZoRecord
from fedft.zo.step import spsa_multi_step_numpy_

Batch = Mapping[str, np.ndarray]
DATA_INPUTS = ("input_ids", "attention_mask", "labels")


class ForwardModel:
    """A plain ``InferenceSession`` over a forward-only graph whose LoRA factors are inputs.

    Parameters
    ----------
    path : str or Path
        ``forward_model.onnx`` of an edge bundle.
    threads : int
        Intra-op threads.
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime  # plain onnxruntime is enough; onnxruntime-training provides it too

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [name for name in DATA_INPUTS if name not in inputs]
        if missing:
            raise EdgeError(f"{path}: the forward graph has no input {missing[0]!r}")
        self.factor_names = sorted(name for name in inputs if name not in DATA_INPUTS)

    def _feed(
        self,
        factors: Mapping[str, np.ndarray],
        batch: Batch,
        weights: Mapping[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray]:
        missing = [name for name in self.factor_names if name not in factors]
        if missing:
            raise EdgeError(f"factors: missing tensor {missing[0]!r} ({len(missing)} missing)")
        feed = {k: np.ascontiguousarray(batch[k], dtype=np.int64) for k in DATA_INPUTS}
        feed.update({name: factors[name] for name in self.factor_names})
        feed.update(weights or {})  # overridable initializers (fedft.edge.ort_sparse)
        return feed

    def loss(
        self,
        factors: Mapping[str, np.ndarray],
        batch: Batch,
        weights: Mapping[str, Any] | None = None,
    ) -> float:
        """Mean causal-LM loss of a batch (over response tokens) at ``factors``.

        ``weights`` replace base weights the graph takes as overridable inputs.
        """
        (loss,) = self.session.run(["loss"], self._feed(factors, batch, weights))
        return float(loss)

    def logits_and_loss(
        self,
        factors: Mapping[str, np.ndarray],
        batch: Batch,
        weights: Mapping[str, Any] | None = None,
    ) -> tuple[np.ndarray, float]:
        """``(B, L, V)`` logits and the mean loss of a batch at ``factors`` (and ``weights``)."""
        logits, loss = self.session.run(["logits", "loss"], self._feed(factors, batch, weights))
        return logits, float(loss)


class ForwardGraph(Protocol):
    """What SPSA steps and evaluation need of a graph: :class:`ForwardModel`, or a sparse one."""

    def loss(self, factors: Mapping[str, np.ndarray], batch: Batch) -> float:
        """Mean loss of a batch at ``factors`` (the trainable state)."""
        ...

    def logits_and_loss(
        self, factors: Mapping[str, np.ndarray], batch: Batch
    ) -> tuple[np.ndarray, float]:
        """Logits and mean loss of a batch at ``factors``."""
        ...


def ort_spsa_steps(
    model: ForwardGraph,
    factors: MutableMapping[str, np.ndarray],
    batches: Iterable[Batch],
    pool: Sequence[int],
    indices: Sequence[int | Sequence[int]],
    *,
    eps: float,
    lr: float,
    grad_scale: float | None = None,
    rounding: str = "nearest",
    privatize: Callable[[float], float] | None = None,
) -> tuple[list[ZoRecord], list[float]]:
    """Take one SPSA step per ``(index, batch)`` on the factors, in place, with ONNX Runtime.

    The perturbed layout is the zo order (:func:`fedft.wire.order.zo_order`); step ``t``
    uses seed ``pool[indices[t]]`` and batch ``t``, as the torch zo client does; when
    ``indices[t]`` is a list of indices, step ``t`` averages those directions
    (:func:`fedft.zo.step.spsa_multi_step`).

    Parameters
    ----------
    model : ForwardGraph
        The bundle's forward-only graph (:class:`fedft.edge.ort_sparse.SparseForward` for a mask).
    factors : MutableMapping[str, np.ndarray]
        LoRA factors by peft name (or a mask's deltas); replaced by contiguous float32 arrays,
        then updated in place.
    batches : Iterable[Mapping[str, np.ndarray]]
        ``input_ids``, ``attention_mask``, ``labels`` (int64, (batch, sequence)), one per step.
    pool, indices : Sequence[int]
        The round's seed pool and each step's index (or list of indices) into it.
    eps, lr : float
        Perturbation size and learning rate.
    grad_scale : float, optional
        Fixed int8 scale of ``g`` (``zo.grad_scale``); None sends float32.
    rounding : {"nearest", "stochastic"}
        How ``g`` rounds to its code (``zo.grad_rounding``).
    privatize : Callable[[float], float], optional
        Applied to each ``g`` before it is quantized and applied (``[privacy]``: clip, noise;
        :func:`clients.privacy.zo_grad`), as on the torch zo client.

    Returns
    -------
    tuple[list[ZoRecord], list[float]]
        One record per step, and every loss evaluated (``L+`` and ``L-`` of each step).
    """
    for name in list(factors):
        factors[name] = np.ascontiguousarray(factors[name], dtype=np.float32)
    arrays = in_zo_order(factors)
    records: list[ZoRecord] = []
    losses: list[float] = []
    for step, batch in zip(indices, batches, strict=True):
        step_indices = [int(step)] if isinstance(step, int | np.integer) else [int(i) for i in step]
        for index in step_indices:
            if not 0 <= index < len(pool):
                raise ZoError(f"seed index {index} is outside the pool of {len(pool)} seeds")

        def loss_fn(batch: Batch = batch) -> float:
            value = model.loss(factors, batch)
            losses.append(value)
            return value

        seeds = [pool[i] for i in step_indices]
        grads = spsa_multi_step_numpy_(
            arrays,
            loss_fn,
            seeds,
            eps,
            lr,
            grad_scale=grad_scale,
            rounding=rounding,
            privatize=privatize,
        )
        records.extend(ZoRecord(i, g) for i, g in zip(step_indices, grads, strict=True))
    return records, losses


def evaluate_forward(
    model: ForwardGraph,
    factors: Mapping[str, np.ndarray],
    dataset: EncodedDataset,
    batch_size: int,
) -> EvalResult:
    """:func:`fedft.train.evaluate` on ONNX Runtime: token-mean loss, perplexity, exact match.

    The graph's batch loss is a mean over the batch's response tokens, so it is weighted by their
    count; a row is exact when the argmax is right at every response position.
    """
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in factors.items()}
    loss_sum, token_count, exact = 0.0, 0, 0
    for start in range(0, len(dataset), batch_size):
        rows = slice(start, start + batch_size)
        batch = {  # np.asarray: numpy rows as they are, torch rows as numpy views
            "input_ids": np.asarray(dataset.input_ids[rows]),
            "attention_mask": np.asarray(dataset.attention_mask[rows]),
            "labels": np.asarray(dataset.labels[rows]),
        }
        targets = batch["labels"][:, 1:]  # (batch, L-1): position t predicts token t+1
        valid = targets != IGNORE_INDEX
        count = int(valid.sum())
        logits, loss = model.logits_and_loss(arrays, batch)
        if count:  # the graph's mean over no token is NaN
            loss_sum += loss * count
            token_count += count
        correct = (logits[:, :-1].argmax(-1) == targets) | ~valid
        exact += int(correct.all(axis=1).sum())
    loss = loss_sum / max(token_count, 1)
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        accuracy=exact / max(len(dataset), 1),
        examples=len(dataset),
    )
