"""Server optimisers on the LoRA factors, with Flower's own maths (FedAvgM, FedAdam, FedYogi).

Flower's :class:`~flwr.serverapp.strategy.FedAvgM`, :class:`~flwr.serverapp.strategy.FedAdam` and
:class:`~flwr.serverapp.strategy.FedYogi` each compute the round's FedAvg and then step from the
round's arrays ``x_t`` along the pseudo-gradient ``x_t - aggregate``. fedft computes the aggregate
itself (screened replies, any strategy's rule), so :class:`ServerOptimizer` puts that aggregate in
the place of Flower's FedAvg (:class:`_GivenAggregate` sits between the optimiser and FedAvg in
the method resolution order) and lets Flower's ``aggregate_train`` do the rest, unchanged:

- FedAvgM (Hsu et al., arXiv 1909.06335): ``v <- momentum v + (x_t - agg)``,
  ``x_{t+1} = x_t - lr v``;
- FedAdam / FedYogi (Reddi et al., arXiv 2003.00295): ``d = agg - x_t``,
  ``m <- b1 m + (1 - b1) d``, ``v <- b2 v + (1 - b2) d^2`` (Yogi:
  ``v - (1 - b2) d^2 sign(v - d^2)``), ``x_{t+1} = x_t + eta' m / (sqrt(v) + tau)`` (Adam's
  ``eta'`` bias-corrected by Flower).

The optimiser's state (momentum, moments) is kept only when the round's aggregate is accepted
(:meth:`ServerOptimizer.step` works on a copy; :meth:`ServerOptimizer.commit` keeps it).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedYogi
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from fedft.flower_records import factors_to_record, record_to_factors
from fedft.optim_config import ServerOptSection


class _GivenAggregate(FedAvg):
    """Stands in for FedAvg's average: returns the aggregate fedft computed."""

    given: ArrayRecord | None = None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The aggregate set in :attr:`given` (the replies were screened and aggregated)."""
        return self.given, MetricRecord({})


class _AvgM(FedAvgM, _GivenAggregate):
    pass


class _Adam(FedAdam, _GivenAggregate):
    pass


class _Yogi(FedYogi, _GivenAggregate):
    pass


class ServerOptimizer:
    """One of Flower's server optimisers, stepping from the global factors to an aggregate."""

    def __init__(self, section: ServerOptSection) -> None:
        self.section = section
        if section.optimizer == "fedavgm":
            self.flower: _GivenAggregate = _AvgM(
                server_learning_rate=section.lr, server_momentum=section.momentum
            )
        else:
            cls = _Adam if section.optimizer == "fedadam" else _Yogi
            self.flower = cls(
                eta=section.lr, beta_1=section.momentum, beta_2=section.beta_2, tau=section.tau
            )
        self.pending: _GivenAggregate | None = None

    def step(
        self,
        server_round: int,
        current: Mapping[str, torch.Tensor],
        aggregate: Mapping[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The new global factors: Flower's step from ``current`` towards ``aggregate``."""
        trial: Any = copy.deepcopy(self.flower)  # Flower's optimiser, with current_arrays
        arrays = factors_to_record(current)
        if isinstance(trial, FedAvgM):
            trial.current_arrays = arrays
        else:  # FedOpt keeps the round's arrays as numpy
            trial.current_arrays = {k: a.numpy() for k, a in arrays.items()}
        trial.given = ArrayRecord(
            {k: Array(np.asarray(v.detach().cpu().numpy())) for k, v in aggregate.items()}
        )
        stepped, _ = trial.aggregate_train(server_round, [])
        self.pending = trial
        assert stepped is not None
        out = record_to_factors(stepped)
        return {k: out[k].to(aggregate[k].dtype) for k in aggregate}

    def commit(self) -> None:
        """Keep the state of the last :meth:`step` (its aggregate was accepted)."""
        if self.pending is not None:
            self.flower, self.pending = self.pending, None

    def state(self) -> str:
        """The optimiser's momentum and moments, for checkpoints (base64 safetensors)."""
        flat: dict[str, np.ndarray] = {}
        momentum = getattr(self.flower, "momentum_vector", None)
        for i, value in enumerate(momentum or []):
            flat[f"momentum_vector/{i}"] = np.ascontiguousarray(value)
        for moment in ("m_t", "v_t"):
            for key, value in (getattr(self.flower, moment, None) or {}).items():
                flat[f"{moment}/{key}"] = np.ascontiguousarray(value)
        return base64.b64encode(save_arrays(flat)).decode() if flat else ""

    def load_state(self, text: str) -> None:
        """Restore what :meth:`state` returned."""
        if not text:
            return
        flat = load_arrays(base64.b64decode(text))
        momentum = [flat[k] for k in sorted(flat, key=_index) if k.startswith("momentum_vector/")]
        if momentum:
            self.flower.momentum_vector = momentum  # type: ignore[attr-defined]
        for moment in ("m_t", "v_t"):
            values = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{moment}/")}
            if values:
                setattr(self.flower, moment, values)


def _index(key: str) -> int:
    return int(key.rsplit("/", 1)[1]) if key.startswith("momentum_vector/") else -1


def build(section: ServerOptSection) -> ServerOptimizer | None:
    """A :class:`ServerOptimizer`, or None for ``optimizer = "none"``."""
    return None if section.optimizer == "none" else ServerOptimizer(section)
