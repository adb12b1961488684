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

import concurrent.futures
import os
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
WARM_ENV = "FEDFT_WARM_PROCESS"  # "1": a process serving many rounds (see SpareTrainers)


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
        self,
        bundle: EdgeBundle,
        factors: Mapping[str, np.ndarray] | None,
        lr: float | None,
        threads: int = 1,
    ) -> None:
        if factors is not None:
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
        inputs = tuple(self.module.input_names())
        if inputs != INPUTS:
            raise EdgeError(f"{bundle.file(TRAINING_MODEL)}: inputs {inputs}, expected {INPUTS}")
        if factors is not None and lr is not None:
            self.begin(factors, lr)

    def begin(self, factors: Mapping[str, np.ndarray], lr: float) -> None:
        """Write the round's start factors by name and set its learning rate (before any step)."""
        check_factors(self.bundle, factors, "factors")
        self.optimizer.set_learning_rate(lr)
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


class SpareTrainers:
    """Next round's training sessions, built in the background while a warm device waits.

    ONNX Runtime keeps AdamW's moments in the ``CheckpointState`` a ``Module`` is bound to, and
    onnxruntime-training 1.19's Python API can neither reset them nor rebind a ``Module`` to a
    fresh state: a round's fresh optimizer (FedIT) needs fresh training sessions. In a process
    that serves many rounds (``$FEDFT_WARM_PROCESS = 1``, set by
    :mod:`fedft.deploy.warm_clientapp`) the sessions of the next round are therefore built in a
    thread as soon as a round's steps end (while the device evaluates, replies and waits for the
    next message), so a round only writes its factors into them by name. Elsewhere (simulations,
    tests) each round builds its own, as before. The sessions are the same either way: a fresh
    checkpoint state, module and optimizer of the bundle.
    """

    def __init__(self) -> None:
        self._ready: dict[tuple[str, int], concurrent.futures.Future[OrtTrainer]] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @staticmethod
    def enabled() -> bool:
        """Whether this process builds the next round's sessions ahead."""
        return os.environ.get(WARM_ENV) == "1"

    def take(self, bundle: EdgeBundle, threads: int) -> OrtTrainer:
        """Fresh sessions of ``bundle``: the ones built ahead if any, else built now."""
        ready = self._ready.pop((str(bundle.path), threads), None)
        if ready is not None:
            try:
                return ready.result()
            except Exception:  # built again below, where its error (if any) is raised
                pass
        return OrtTrainer(bundle, None, None, threads)

    def prepare(self, bundle: EdgeBundle, threads: int) -> None:
        """Start building the next round's sessions of ``bundle`` (a warm process only)."""
        if not self.enabled() or (str(bundle.path), threads) in self._ready:
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "ort-spare-sessions")
        future = self._pool.submit(OrtTrainer, bundle, None, None, threads)
        self._ready[(str(bundle.path), threads)] = future

    def cache_clear(self) -> None:
        """Drop the sessions built ahead (another run or bundle: :mod:`clients.warm`)."""
        self._ready.clear()


SPARES = SpareTrainers()


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
    check_factors(bundle, factors, "factors")
    trainer = SPARES.take(bundle, threads)
    trainer.begin(factors, lr)
    losses = [trainer.step(batch) for batch in batches]
    SPARES.prepare(bundle, threads)  # in a warm process: the next round's sessions, meanwhile
    return OrtTrainResult(trainer.factors(), losses)
