"""Flower glue: factor states and scenarios in and out of Flower's records, and the message keys.

Where ``fedft/`` converts to and from ``flwr.app`` records (besides it, only the simulation runner
and the console touch Flower): the maths (``fedft/algorithms/``, ``fedft/zo/``) and the codecs
(``fedft/wire/``) stay Flower-free; ``server/`` and ``clients/``, which both speak these records,
call the helpers here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedft.config import Scenario
from fedft.errors import ReplyError

if TYPE_CHECKING:  # torch is imported where tensors are made: numpy devices need none
    import torch

SCENARIO_KEY = "fedft-scenario"  # train config entry (and node state): the scenario as JSON
SCENARIO_DIGEST_KEY = "fedft-scenario-digest"  # train config entry: scenario_digest(JSON)
ZO_REPLY_KEY = "zo"  # ConfigRecord of a zo client's reply: {"records": <fedft.v1.ZoReply bytes>}
UPDATE_KEY = "update"  # ConfigRecord of a torch reply: {"update": <fedft.v1.LoraUpdate bytes>}
ZO_HISTORY_KEY = "zo-history"  # train config entry: <fedft.v1.ZoHistory bytes> to catch up
ZO_CHECKPOINT_ROUND_KEY = "zo-checkpoint-round"  # train config entry when arrays are sent instead
ZO_SCALE_KEY = "zo-int8-scale"  # train config entry: the round's int8 scale of g (adaptive)
ZO_MASK_KEY = "zo-mask"  # train config entry, once per node: the sparse mask (fedft.zo.sparse)
ZO_MASK_DIGEST_KEY = "zo-mask-digest"  # train config entry, every round: the mask's SHA-256
FERRET_REPLY_KEY = "ferret"  # ConfigRecord of a Ferret reply: {"coords": <fedft.v1.FerretReply>}
FERRET_HISTORY_KEY = "ferret-history"  # train config entry: <fedft.v1.FerretHistory bytes>
MERGED_KEY = "merged"  # ArrayRecord of a flora train message: the factors merged into the base
FERRET_CHECKPOINT_ROUND_KEY = "ferret-checkpoint-round"  # train config entry with the arrays


def factors_to_record(
    factors: Mapping[str, torch.Tensor] | Mapping[str, np.ndarray],
) -> ArrayRecord:
    """Pack a factor state (torch tensors or numpy arrays: the same bytes) into an ArrayRecord."""
    arrays = {}
    for name, value in factors.items():
        if not isinstance(value, np.ndarray):  # a torch tensor, as Flower converts it
            value = value.detach().cpu().contiguous().numpy()
        arrays[name] = Array(np.ascontiguousarray(value))
    return ArrayRecord(arrays)


def record_to_arrays(
    record: ArrayRecord, template: Mapping[str, torch.Tensor] | None = None
) -> dict[str, np.ndarray]:
    """Unpack an ArrayRecord into numpy arrays (no torch), undecodable ones :class:`ReplyError`.

    With ``template`` (the global state), names and serialized sizes are checked against it before
    anything is decoded: a reply cannot make the server allocate more than the global state holds.
    """
    if template is not None:
        _check_record_sizes(record, template)
    out = {}
    for name in record:
        try:
            out[name] = record[name].numpy().copy()
        except Exception as err:  # any decode failure is the sender's fault
            raise ReplyError(f"reply: tensor {name!r} cannot be decoded ({err})") from None
    return out


def record_to_factors(
    record: ArrayRecord, template: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """:func:`record_to_arrays` as torch tensors (one torch cannot hold: :class:`ReplyError`)."""
    import torch

    out = {}
    for name, array in record_to_arrays(record, template).items():
        try:
            out[name] = torch.from_numpy(array)
        except Exception as err:  # e.g. a big-endian or unsigned dtype: the sender's fault
            raise ReplyError(f"reply: tensor {name!r} cannot be decoded ({err})") from None
    return out


_HEADER_SLACK = 1024  # an .npy header is well under this


def _check_record_sizes(record: ArrayRecord, template: Mapping[str, torch.Tensor]) -> None:
    for name in record:
        if name not in template:
            raise ReplyError(f"reply: unknown tensor {name!r}")
        expected = template[name].numel() * template[name].element_size()
        if len(record[name].data) > expected + _HEADER_SLACK:
            raise ReplyError(
                f"reply: tensor {name!r} holds {len(record[name].data)} bytes, "
                f"the global tensor {expected}"
            )


def config_int(config: ConfigRecord, key: str) -> int:
    """``int(config[key])`` for a number entry; :class:`ReplyError` naming the key otherwise."""
    value = config[key]
    if not isinstance(value, int | float):  # (bool is an int)
        raise ReplyError(f"config entry {key!r} must be a number, got {type(value).__name__}")
    return int(value)


def config_float(config: ConfigRecord, key: str) -> float:
    """``float(config[key])`` for a finite number entry; :class:`ReplyError` naming the key else."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReplyError(f"config entry {key!r} must be a finite number, got {value!r}")
    return float(value)


def record_nbytes(record: ArrayRecord) -> int:
    """Payload bytes of an ArrayRecord: serialized array data plus key names."""
    return record.count_bytes()


def scenario_digest(text: str) -> str:
    """The name a scenario text goes by once a node holds it (64 bits of its SHA-256, hex)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scenario_to_config(scenario: Scenario) -> ConfigRecord:
    """The scenario as train-config entries: its JSON text and the text's digest."""
    text = json.dumps(scenario.to_dict(), sort_keys=True)
    return ConfigRecord({SCENARIO_KEY: text, SCENARIO_DIGEST_KEY: scenario_digest(text)})


def without_scenario(config: ConfigRecord) -> ConfigRecord:
    """The config for a node that holds the scenario already: the digest without the text."""
    return ConfigRecord({k: v for k, v in config.items() if k != SCENARIO_KEY})


@functools.lru_cache(maxsize=8)
def _parse_scenario(text: str) -> Scenario:
    return Scenario.from_dict(json.loads(text))


def config_to_scenario(config: ConfigRecord, state: RecordDict) -> Scenario:
    """Rebuild (and validate, once per distinct text) the scenario a server sent.

    The server sends a node the scenario's text once, and then only its digest; the node keeps the
    text in its Flower ``state`` (``context.state``) between rounds.

    Raises
    ------
    ReplyError
        If the digest is missing or does not match the text, or the node does not hold the text
        the digest names (a restarted node: the server sends the text again the next round).
    """
    if SCENARIO_DIGEST_KEY not in config:
        raise ReplyError(f"the server's message has no {SCENARIO_DIGEST_KEY!r} config entry")
    digest = str(config[SCENARIO_DIGEST_KEY])
    if SCENARIO_KEY in config:
        text = str(config[SCENARIO_KEY])
        if scenario_digest(text) != digest:
            raise ReplyError(f"config entry {SCENARIO_KEY!r} does not match its digest {digest}")
        scenario = _parse_scenario(text)
        state.config_records[SCENARIO_KEY] = ConfigRecord({SCENARIO_KEY: text})
        return scenario
    held = state.config_records.get(SCENARIO_KEY, ConfigRecord())
    text = str(held.get(SCENARIO_KEY, ""))
    if scenario_digest(text) != digest:
        raise ReplyError(
            f"this node does not hold scenario {digest} (restarted?): the server sends it again"
        )
    return _parse_scenario(text)
