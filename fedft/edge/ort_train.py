"""On-device LoRA training with ONNX Runtime's training API, from and back to factor states.

One round, as the torch client does it (:func:`fedft.train.train_local`): a fresh optimizer state,
the global factors written into the checkpoint state by name, ``steps`` AdamW steps (gradient
clipping and AdamW as baked into the bundle's optimizer graph), the factors read back by name.

ONNX Runtime keeps the AdamW moments and step count inside the ``CheckpointState``, and a new
``Optimizer`` on a used state resumes them, so each round loads the state afresh from the bundle's
checkpoint: that is the "new optimizer every round" of FedIT. A ``CheckpointState`` must be bound to
a ``Module`` before parameters are written into it (writing first crashes onnxruntime 1.19).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedft.edge.bundle import CHECKPOINT, OPTIMIZER_MODEL, TRAINING_MODEL, EdgeBundle
from fedft.edge.errors import EdgeError, training_api

if TYPE_CHECKING:
    import onnxruntime

Batch = Mapping[str, np.ndarray]
INPUTS = ("input_ids", "attention_mask", "labels")


def session_options(threads: int) -> onnxruntime.SessionOptions:
    """``onnxruntime.SessionOptions`` with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def check_factors(bundle: EdgeBundle, factors: Mapping[str, np.ndarray], what: str) -> None:
    """Raise :class:`EdgeError` unless ``factors`` has exactly the bundle's names and shapes."""
    layout = dict(bundle.factor_layout)
    missing = sorted(set(layout) - set(factors))
    if missing:
        raise EdgeError(f"{what}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    unknown = sorted(set(factors) - set(layout))
    if unknown:
        raise EdgeError(f"{what}: tensor {unknown[0]!r} is not a LoRA factor of the bundle")
    for name, shape in layout.items():
        if tuple(factors[name].shape) != shape:
            raise EdgeError(
                f"{what}: tensor {name!r} has shape {tuple(factors[name].shape)}, the bundle's "
                f"is {shape}"
            )


@dataclass(frozen=True)
class OrtTrainResult:
    """The factors after a round of ORT training, and the loss of every step."""

    factors: dict[str, np.ndarray]
    losses: list[float]


class OrtTrainer:
    """One round's ORT training state: checkpoint state, module and optimizer of a bundle.

    Parameters
    ----------
    bundle : EdgeBundle
        Built for the run's configuration (see :func:`fedft.edge.bundle.open_bundle`).
    factors : Mapping[str, np.ndarray]
        The starting LoRA factors, by peft state-dict name (float32).
    lr : float
        AdamW learning rate.
    threads : int
        Intra-op threads of the training sessions.
    """

    def __init__(
        self, bundle: EdgeBundle, factors: Mapping[str, np.ndarray], lr: float, threads: int = 1
    ) -> None:
        check_factors(bundle, factors, "factors")
        api = training_api()
        self.bundle = bundle
        self.state = api.CheckpointState.load_checkpoint(bundle.file(CHECKPOINT))
        # no eval graph: evaluation runs the forward-only graph (fedft.edge.ort_zo), and
        # skipping it saves about 40% of the per-round session setup
        self.module = api.Module(
            bundle.file(TRAINING_MODEL),
            self.state,
            None,
            device="cpu",
            session_options=session_options(threads),
        )
        self.optimizer = api.Optimizer(bundle.file(OPTIMIZER_MODEL), self.module)
        self.optimizer.set_learning_rate(lr)
        inputs = tuple(self.module.input_names())
        if inputs != INPUTS:
            raise EdgeError(f"{bundle.file(TRAINING_MODEL)}: inputs {inputs}, expected {INPUTS}")
        parameters = self.state.parameters
        for name, value in factors.items():
            parameters[name] = np.ascontiguousarray(value, dtype=np.float32)

    def step(self, batch: Batch) -> float:
        """One AdamW step on a batch (``input_ids``, ``attention_mask``, ``labels``); its loss."""
        self.module.train()
        loss = self.module(*(np.ascontiguousarray(batch[k], dtype=np.int64) for k in INPUTS))
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return float(loss)

    def factors(self) -> dict[str, np.ndarray]:
        """Copies of the current LoRA factors, by peft state-dict name."""
        parameters = self.state.parameters
        return {name: np.array(parameters[name].data) for name, _ in self.bundle.factor_layout}


def train_steps(
    bundle: EdgeBundle,
    factors: Mapping[str, np.ndarray],
    batches: Iterable[Batch],
    lr: float,
    threads: int = 1,
) -> OrtTrainResult:
    """Train the LoRA factors on ``batches`` (one AdamW step each) from a fresh optimizer state.

    Parameters
    ----------
    bundle : EdgeBundle
        The run's edge bundle.
    factors : Mapping[str, np.ndarray]
        Starting factors (the round's global ones).
    batches : Iterable[Mapping[str, np.ndarray]]
        ``input_ids``, ``attention_mask``, ``labels``: int64, (batch, sequence).
    lr : float
        AdamW learning rate.
    threads : int
        Intra-op threads.

    Returns
    -------
    OrtTrainResult
        The new factors and the per-step losses.
    """
    trainer = OrtTrainer(bundle, factors, lr, threads)
    losses = [trainer.step(batch) for batch in batches]
    return OrtTrainResult(trainer.factors(), losses)
