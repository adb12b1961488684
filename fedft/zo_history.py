"""The zeroth-order history: per-round aggregates a client replays to catch up.

The global model of a ``zo`` run is the starting state replayed with every round's aggregate
(:func:`fedft.algorithms.zo.replay_`). A client that last synced at round ``r`` needs only the
aggregates of rounds ``r+1 ..``; the server sends them as a ``fedft.v1.ZoHistory`` message when that
is smaller than the trainable weights (:func:`fedft.algorithms.zo.prefer_replay`), else the weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from google.protobuf.message import DecodeError

from fedft.algorithms.zo import ZoRecord, replay_, replay_records_, seed_pool, seed_pool_id
from fedft.config import ZoSection
from fedft.v1 import zo_pb2
from fedft.zo_wire import WIRE_VERSION, WireError

_U32 = np.dtype("<u4")
_F32 = np.dtype("<f4")


@dataclass(frozen=True)
class RoundAggregate:
    """One round's ``{seed index: a_s}`` over the pool ``seed_pool(run_seed, round, pool_size)``."""

    round: int
    pool_size: int
    aggregate: Mapping[int, float]


def replay_history_(
    params: Sequence[torch.Tensor],
    history: Sequence[RoundAggregate],
    run_seed: int,
    lr: float,
) -> None:
    """Replay rounds in order onto ``params`` (the catch-up of a client, or the server's step)."""
    for entry in history:
        replay_(params, seed_pool(run_seed, entry.round, entry.pool_size), entry.aggregate, lr)


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
        raise WireError("history", f"not a ZoHistory ({error})") from None
    if message.version != WIRE_VERSION:
        raise WireError("version", f"expected {WIRE_VERSION}, got {message.version}")
    out, last_round = [], 0
    for entry in message.rounds:
        where = f"rounds[{entry.round}]"
        if entry.round <= last_round:
            raise WireError(where, "rounds must be strictly increasing and > 0")
        if entry.pool_size != pool_size:
            raise WireError(f"{where}.pool_size", f"{entry.pool_size}, this run's is {pool_size}")
        if max_round is not None and entry.round > max_round:
            raise WireError(where, f"beyond the run's {max_round} rounds")
        if entry.pool_id != seed_pool_id(run_seed, entry.round, entry.pool_size):
            raise WireError(f"{where}.pool_id", "does not match this run's seed pool")
        if len(entry.seed_indices) % 4 or len(entry.values) != len(entry.seed_indices):
            raise WireError(f"{where}.values", "seed_indices and values lengths disagree")
        indices = np.frombuffer(entry.seed_indices, _U32)
        values = np.frombuffer(entry.values, _F32)
        if indices.size and (
            np.any(np.diff(indices.astype(np.int64)) <= 0) or indices[-1] >= entry.pool_size
        ):
            raise WireError(f"{where}.seed_indices", "must increase and stay inside the pool")
        if not np.all(np.isfinite(values)):
            raise WireError(f"{where}.values", "holds non-finite values")
        aggregate = dict(zip(indices.tolist(), values.astype(np.float64).tolist(), strict=True))
        out.append(RoundAggregate(entry.round, entry.pool_size, aggregate))
        last_round = entry.round
    return out


def rebuild_factors(
    start: Mapping[str, torch.Tensor],
    records: Sequence[ZoRecord],
    zo: ZoSection,
    run_seed: int,
    server_round: int,
) -> dict[str, torch.Tensor]:
    """A zo client's factors after its round, rebuilt from the round's start and its records.

    Mixed rounds: the server turns a few bytes per step back into factors it can average with the
    first-order clients'. Bit-exact with the client's own tensors when ``g`` is what the client
    applied (fp32, or int8 at the run's fixed scale), as :func:`fedft.algorithms.zo.spsa_step_`
    and :func:`fedft.algorithms.zo.replay_records_` pin every float operation.
    """
    out = {name: tensor.detach().clone() for name, tensor in start.items()}
    params = [out[name] for name in sorted(out)]
    pool = seed_pool(run_seed, server_round, zo.pool_size)
    replay_records_(params, pool, records, zo.lr, zo.eps)
    return out
