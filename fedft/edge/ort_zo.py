"""Forward-only ONNX Runtime: the LoRA factors as graph inputs, SPSA steps and evaluation.

The bundle's ``forward_model.onnx`` takes ``input_ids``, ``attention_mask``, ``labels`` and every
LoRA factor (by peft state-dict name) as inputs and returns ``logits`` and the causal-LM ``loss``.
It runs in a plain ``onnxruntime.InferenceSession``: no training runtime, no torch model, memory at
inference level. The zeroth-order step is :func:`fedft.algorithms.zo.spsa_step_` on numpy arrays,
with :func:`fedft.rng.perturb_numpy_` (bit-identical to :func:`fedft.rng.perturb_`) and the same
float32 coefficients, so its records are interchangeable with the torch zo client's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path

import numpy as np

from fedft.algorithms.zo import (
    ZoError,
    ZoRecord,
    check_eps,
    dequantize_grads,
    quantize_grads,
    restore_and_step,
)
from fedft.data.encode import IGNORE_INDEX, EncodedDataset
from fedft.edge.errors import EdgeError
from fedft.rng import perturb_numpy_
from fedft.train import EvalResult

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

    def _feed(self, factors: Mapping[str, np.ndarray], batch: Batch) -> dict[str, np.ndarray]:
        missing = [name for name in self.factor_names if name not in factors]
        if missing:
            raise EdgeError(f"factors: missing tensor {missing[0]!r} ({len(missing)} missing)")
        feed = {k: np.ascontiguousarray(batch[k], dtype=np.int64) for k in DATA_INPUTS}
        feed.update({name: factors[name] for name in self.factor_names})
        return feed

    def loss(self, factors: Mapping[str, np.ndarray], batch: Batch) -> float:
        """Mean causal-LM loss of a batch (over response tokens) at ``factors``."""
        (loss,) = self.session.run(["loss"], self._feed(factors, batch))
        return float(loss)

    def logits_and_loss(
        self, factors: Mapping[str, np.ndarray], batch: Batch
    ) -> tuple[np.ndarray, float]:
        """``(B, L, V)`` logits and the mean loss of a batch at ``factors``."""
        logits, loss = self.session.run(["logits", "loss"], self._feed(factors, batch))
        return logits, float(loss)


def spsa_step_numpy_(
    arrays: Sequence[np.ndarray],
    loss_fn: Callable[[], float],
    seed: int,
    eps: float,
    lr: float,
    *,
    grad_scale: float | None = None,
) -> float:
    r"""One SPSA step in place on numpy arrays: :func:`fedft.algorithms.zo.spsa_step_`, exactly.

    ``w += eps z``; ``L+``; ``w -= 2 eps z``; ``L-``; ``g = float32((L+ - L-) / (2 eps))``
    (quantized at ``grad_scale`` first, if given); ``w += (eps - lr g) z``. Every pass is
    :func:`fedft.rng.perturb_numpy_` with the same float32 coefficients as the torch step, so from
    the same arrays and losses the two give the same bits.

    Returns
    -------
    float
        The applied ``g``.
    """
    eps32 = check_eps(eps)
    perturb_numpy_(arrays, seed, eps32)
    loss_plus = float(loss_fn())
    perturb_numpy_(arrays, seed, -2 * eps32)
    loss_minus = float(loss_fn())
    with np.errstate(over="ignore"):
        grad = float(np.float32((loss_plus - loss_minus) / (2 * eps32)))
    if not math.isfinite(grad):
        perturb_numpy_(arrays, seed, eps32)
        raise ZoError(f"seed {seed}: L+ = {loss_plus}, L- = {loss_minus} give g = {grad}")
    if grad_scale is not None:
        codes, _ = quantize_grads([grad], grad_scale)
        grad = dequantize_grads(codes, grad_scale)[0]
    perturb_numpy_(arrays, seed, restore_and_step(eps32, lr, grad))
    return grad


def ort_spsa_steps(
    model: ForwardModel,
    factors: MutableMapping[str, np.ndarray],
    batches: Iterable[Batch],
    pool: Sequence[int],
    indices: Sequence[int],
    *,
    eps: float,
    lr: float,
    grad_scale: float | None = None,
) -> tuple[list[ZoRecord], list[float]]:
    """Take one SPSA step per ``(index, batch)`` on the factors, in place, with ONNX Runtime.

    The perturbed layout is the factor names sorted (``clients.zo_client.zo_layout``); step ``t``
    uses seed ``pool[indices[t]]`` and batch ``t``, as the torch zo client does.

    Parameters
    ----------
    model : ForwardModel
        The bundle's forward-only graph.
    factors : MutableMapping[str, np.ndarray]
        LoRA factors by peft name; replaced by contiguous float32 arrays, then updated in place.
    batches : Iterable[Mapping[str, np.ndarray]]
        ``input_ids``, ``attention_mask``, ``labels`` (int64, (batch, sequence)), one per step.
    pool, indices : Sequence[int]
        The round's seed pool and each step's index into it.
    eps, lr : float
        Perturbation size and learning rate.
    grad_scale : float, optional
        Fixed int8 scale of ``g`` (``zo.grad_scale``); None sends float32.

    Returns
    -------
    tuple[list[ZoRecord], list[float]]
        One record per step, and every loss evaluated (``L+`` and ``L-`` of each step).
    """
    for name in list(factors):
        factors[name] = np.ascontiguousarray(factors[name], dtype=np.float32)
    arrays = [factors[name] for name in sorted(factors)]
    records, losses = [], []
    for index, batch in zip(indices, batches, strict=True):
        if not 0 <= index < len(pool):
            raise ZoError(f"seed index {index} is outside the pool of {len(pool)} seeds")

        def loss_fn(batch: Batch = batch) -> float:
            value = model.loss(factors, batch)
            losses.append(value)
            return value

        grad = spsa_step_numpy_(arrays, loss_fn, pool[index], eps, lr, grad_scale=grad_scale)
        records.append(ZoRecord(int(index), grad))
    return records, losses


def evaluate_forward(
    model: ForwardModel,
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
        batch = {
            "input_ids": dataset.input_ids[rows].numpy(),
            "attention_mask": dataset.attention_mask[rows].numpy(),
            "labels": dataset.labels[rows].numpy(),
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
