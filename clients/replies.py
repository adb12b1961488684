"""What a client runtime returns, and how the app puts it into Flower's reply message.

Two kinds, whatever the runtime: new LoRA factors (:class:`FactorReply`, sent as an ArrayRecord or
an encoded ``fedft.v1.LoraUpdate`` as ``federation.update_encoding`` says) and zeroth-order records
(:class:`ZoReply`, an encoded ``fedft.v1.ZoReply``). The server cannot tell the runtimes apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedft.config import Scenario
from fedft.flower_records import UPDATE_KEY, ZO_REPLY_KEY, factors_to_record
from fedft.wire.update import encode_update


@dataclass(frozen=True)
class Reply(ABC):
    """A round's result: the factors the client ends with and the round's metrics.

    ``factors`` are torch tensors, or numpy arrays on an ONNX Runtime node (same bytes sent).
    """

    factors: dict[str, Any]  # torch.Tensor, or numpy.ndarray
    metrics: dict[str, float]

    @abstractmethod
    def update(self, scenario: Scenario) -> RecordDict:
        """The reply's update, as the records the server decodes."""

    def content(self, scenario: Scenario, partition_id: int) -> RecordDict:
        """The reply message's content: the update plus ``metrics`` (with the ``partition``)."""
        content = self.update(scenario)
        content["metrics"] = MetricRecord({**self.metrics, "partition": float(partition_id)})
        return content


@dataclass(frozen=True)
class FactorReply(Reply):
    """New LoRA factors (a first-order runtime)."""

    def update(self, scenario: Scenario) -> RecordDict:
        """An ArrayRecord (``fp32_array``), else a ``fedft.v1.LoraUpdate`` (fp32, or int8 rows)."""
        encoding = scenario.federation.update_encoding
        if encoding == "fp32_array":
            return RecordDict({"arrays": factors_to_record(self.factors)})
        update = ConfigRecord({UPDATE_KEY: encode_update(self.factors, encoding)})
        return RecordDict({UPDATE_KEY: update})


@dataclass(frozen=True)
class ZoReply(Reply):
    """Zeroth-order records (a zeroth-order runtime); ``factors`` are what the server rebuilds."""

    payload: bytes  # the encoded fedft.v1.ZoReply

    def update(self, scenario: Scenario) -> RecordDict:
        """``{"zo": {"records": <fedft.v1.ZoReply bytes>}}``."""
        return RecordDict({ZO_REPLY_KEY: ConfigRecord({"records": self.payload})})
