"""Encode and decode the zeroth-order history, the ``fedft.v1.ZoHistory`` protobuf message.

The per-round aggregates a zo client replays to catch up (:func:`fedft.zo.replay.replay_history_`),
sent when they cost fewer bytes than the trainable weights (:func:`fedft.zo.replay.prefer_replay`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from fedft.v1 import zo_pb2
from fedft.wire.errors import WireError
from fedft.wire.zo_reply import WIRE_VERSION
from fedft.zo.replay import RoundAggregate
from fedft.zo.seeds import seed_pool_id

_U32 = np.dtype("<u4")
_F32 = np.dtype("<f4")


def _error(field: str, message: str) -> WireError:
    return WireError("zo history", field, message)


def encode_history(history: Sequence[RoundAggregate], run_seed: int) -> bytes:
    """Serialize rounds as a ``fedft.v1.ZoHistory``."""
    message = zo_pb2.ZoHistory(version=WIRE_VERSION)
    for entry in history:
        indices = sorted(entry.aggregate)
        message.rounds.add(
            round=entry.round,
            pool_id=seed_pool_id(run_seed, entry.round, entry.pool_size),
            pool_size=entry.pool_size,
            seed_indices=np.asarray(indices, _U32).tobytes(),
            values=np.asarray([entry.aggregate[i] for i in indices], _F32).tobytes(),
        )
    return message.SerializeToString()


def decode_history(
    data: bytes, run_seed: int, pool_size: int, max_round: int | None = None
) -> list[RoundAggregate]:
    """Parse and check a ``fedft.v1.ZoHistory`` (version, pools, lengths, order, finiteness).

    Bounded by the run's config before anything is allocated: every round's pool must be the run's
    ``pool_size`` (replaying builds the pool's seeds) and, when given, rounds at most
    ``max_round`` (the scenario's ``federation.num_rounds``).
    """
    message = zo_pb2.ZoHistory()
    try:
        message.ParseFromString(bytes(data))
    except DecodeError as error:
        raise _error("history", f"not a ZoHistory ({error})") from None
    if message.version != WIRE_VERSION:
        raise _error("version", f"expected {WIRE_VERSION}, got {message.version}")
    out, last_round = [], 0
    for entry in message.rounds:
        where = f"rounds[{entry.round}]"
        if entry.round <= last_round:
            raise _error(where, "rounds must be strictly increasing and > 0")
        if entry.pool_size != pool_size:
            raise _error(f"{where}.pool_size", f"{entry.pool_size}, this run's is {pool_size}")
        if max_round is not None and entry.round > max_round:
            raise _error(where, f"beyond the run's {max_round} rounds")
        if entry.pool_id != seed_pool_id(run_seed, entry.round, entry.pool_size):
            raise _error(f"{where}.pool_id", "does not match this run's seed pool")
        if len(entry.seed_indices) % 4 or len(entry.values) != len(entry.seed_indices):
            raise _error(f"{where}.values", "seed_indices and values lengths disagree")
        indices = np.frombuffer(entry.seed_indices, _U32)
        values = np.frombuffer(entry.values, _F32)
        if indices.size and (
            np.any(np.diff(indices.astype(np.int64)) <= 0) or indices[-1] >= entry.pool_size
        ):
            raise _error(f"{where}.seed_indices", "must increase and stay inside the pool")
        if not np.all(np.isfinite(values)):
            raise _error(f"{where}.values", "holds non-finite values")
        aggregate = dict(zip(indices.tolist(), values.astype(np.float64).tolist(), strict=True))
        out.append(RoundAggregate(entry.round, entry.pool_size, aggregate))
        last_round = entry.round
    return out
