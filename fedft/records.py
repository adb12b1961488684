"""The one place fedft meets Flower's records: factor states and scenarios in and out of messages.

Everything else in fedft is Flower-free; ``server/`` and ``clients/`` call these helpers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedft.config import Scenario
from fedft.errors import ReplyError

SCENARIO_KEY = "fedft-scenario"
ZO_REPLY_KEY = "zo"  # ConfigRecord of a zo client's reply: {"records": <fedft.v1.ZoReply bytes>}
UPDATE_KEY = "update"  # ConfigRecord of a torch reply: {"update": <fedft.v1.LoraUpdate bytes>}
ZO_HISTORY_KEY = "zo-history"  # train config entry: <fedft.v1.ZoHistory bytes> to catch up
ZO_CHECKPOINT_ROUND_KEY = "zo-checkpoint-round"  # train config entry when arrays are sent instead


def factors_to_record(factors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Pack a factor state into an ArrayRecord (CPU, contiguous)."""
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in factors.items()})


def record_to_factors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Unpack an ArrayRecord into tensors, turning undecodable arrays into :class:`ReplyError`."""
    out = {}
    for name in record:
        try:
            out[name] = torch.from_numpy(record[name].numpy().copy())
        except Exception as err:  # any decode failure is the sender's fault
            raise ReplyError(f"reply: tensor {name!r} cannot be decoded ({err})") from None
    return out


def record_nbytes(record: ArrayRecord) -> int:
    """Payload bytes of an ArrayRecord: serialized array data plus key names."""
    return record.count_bytes()


def scenario_to_config(scenario: Scenario) -> ConfigRecord:
    """The scenario as a ConfigRecord entry (JSON), sent with every round's instructions."""
    return ConfigRecord({SCENARIO_KEY: json.dumps(scenario.to_dict(), sort_keys=True)})


@functools.lru_cache(maxsize=8)
def _parse_scenario(text: str) -> Scenario:
    return Scenario.from_dict(json.loads(text))


def config_to_scenario(config: ConfigRecord) -> Scenario:
    """Rebuild (and validate, once per distinct text) the scenario a server sent."""
    if SCENARIO_KEY not in config:
        raise ReplyError(f"the server's message has no {SCENARIO_KEY!r} config entry")
    return _parse_scenario(str(config[SCENARIO_KEY]))
