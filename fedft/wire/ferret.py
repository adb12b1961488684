"""Encode and decode Ferret's messages: ``fedft.v1.FerretReply`` and ``fedft.v1.FerretHistory``.

A reply carries one client's coordinates (:class:`fedft.ferret.aggregate.FerretCoordinates`): per
block ``n_b`` and ``n_b`` coordinates, int8 or int4 (two a byte) with one float32 scale per block,
or float32. The history
carries the per-round aggregates a client that missed rounds applies. The decoders trust nothing:
every size is checked against the run's config (block count, pool size, rounds) before anything is
allocated, and a bad message raises :class:`WireError` naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from fedft.ferret.aggregate import FerretCoordinates, FerretRound
from fedft.ferret.blocks import MIN_SEEDS
from fedft.v1 import ferret_pb2
from fedft.wire.errors import WireError
from fedft.wire.int8 import INT8_LEVELS, codes_at, peak_scales
from fedft.zo.seeds import seed_pool_id

WIRE_VERSION = 1
ENCODINGS = {
    "int8": ferret_pb2.FERRET_COORD_ENCODING_INT8,
    "int4": ferret_pb2.FERRET_COORD_ENCODING_INT4,
    "fp32": ferret_pb2.FERRET_COORD_ENCODING_FP32,
}
LEVELS = {"int8": 127, "int4": 7}  # codes in [-L, L], one float32 scale float32(peak / L) a block
_NAMES = {v: k for k, v in ENCODINGS.items()}
_U32 = np.dtype("<u4")
_F32 = np.dtype("<f4")


def _error(field: str, message: str, kind: str = "ferret reply") -> WireError:
    return WireError(kind, field, message)


@dataclass(frozen=True)
class FerretReplyMessage:
    """A decoded, validated Ferret reply; ``coordinates`` hold the dequantized float32 values."""

    pool_id: int
    round: int
    client: int
    encoding: str
    coordinates: FerretCoordinates


def _check_uint(field: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise _error(field, f"must be an integer in [0, 2**{bits}), got {value!r}")


def encode_ferret_reply(
    coordinates: FerretCoordinates,
    *,
    pool_id: int,
    round: int,
    client: int,
    encoding: str = "int8",
) -> bytes:
    """Serialize a client's coordinates for one round.

    Parameters
    ----------
    coordinates : FerretCoordinates
        ``n_b`` and the float32 coordinates of each block (:func:`client_coordinates`).
    pool_id, round, client : int
        The round's seed pool, the server round and the client's index in the scenario.
    encoding : {"int8", "int4", "fp32"}
        One byte per coordinate (with a float32 scale ``max |gamma| / 127`` per block), half a
        byte (scale ``max |gamma| / 7``), or four.

    Returns
    -------
    bytes
        The serialized ``fedft.v1.FerretReply``.
    """
    _check_uint("pool_id", pool_id, 64)
    _check_uint("round", round, 32)
    _check_uint("client", client, 32)
    if encoding not in ENCODINGS:
        raise _error("encoding", f"must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    counts, coords = coordinates.counts, coordinates.coords
    if len(counts) != len(coords):
        raise _error("seed_counts", f"{len(counts)} counts for {len(coords)} blocks")
    message = ferret_pb2.FerretReply(
        version=WIRE_VERSION,
        pool_id=pool_id,
        round=round,
        client=client,
        num_blocks=len(counts),
        encoding=ENCODINGS[encoding],
        seed_counts=list(counts),
    )
    parts = []
    for b, (count, values) in enumerate(zip(counts, coords, strict=True)):
        values = np.asarray(values, np.float64).reshape(1, -1)  # (1, n_b)
        if values.shape[1] != count:
            raise _error("coords", f"block {b}: {values.shape[1]} coordinates for {count} seeds")
        if not np.all(np.isfinite(values)):
            raise _error("coords", f"block {b}: cannot encode non-finite coordinates")
        if encoding in LEVELS:
            peak = np.max(np.abs(values), axis=1, initial=0.0)
            scales = peak_scales(peak * (INT8_LEVELS / LEVELS[encoding]))  # float32(peak / L)
            message.scales.append(float(scales[0]))
            codes = codes_at(values, scales).reshape(-1)  # the peak's code is L
            parts.append(np.clip(codes, -LEVELS[encoding], LEVELS[encoding]))
        else:
            parts.append(values.astype(_F32).reshape(-1))
    if encoding == "fp32":
        message.coords = b"".join(p.tobytes() for p in parts)
    elif encoding == "int8":
        message.coords = np.concatenate(parts).astype(np.int8).tobytes()
    else:
        message.coords = pack_int4(np.concatenate(parts).astype(np.int8))
    return message.SerializeToString()


def pack_int4(codes: np.ndarray) -> bytes:
    """Codes in ``[-7, 7]``, two a byte: code ``2i`` in byte ``i``'s low nibble, ``2i + 1`` high."""
    nibbles = (np.asarray(codes, np.int8).astype(np.int16) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(raw: bytes, count: int) -> np.ndarray:
    """``count`` int8 codes of :func:`pack_int4`'s bytes (4-bit two's complement, -8 kept)."""
    octets = np.frombuffer(raw, np.uint8)
    nibbles = np.empty(2 * octets.size, np.int16)
    nibbles[0::2], nibbles[1::2] = octets & 0xF, octets >> 4
    codes = np.where(nibbles >= 8, nibbles - 16, nibbles).astype(np.int8)
    if codes.size > count and codes[count] != 0:
        raise _error("coords", "the padding nibble after an odd last int4 code must be 0")
    return codes[:count]


def _decode_coords(
    message: ferret_pb2.FerretReply, counts: list[int], max_abs: float | None
) -> tuple[np.ndarray, ...]:
    total, raw = sum(counts), message.coords
    if message.encoding == ferret_pb2.FERRET_COORD_ENCODING_FP32:
        if len(message.scales):
            raise _error("scales", "must be empty with fp32 coordinates")
        if len(raw) != 4 * total:
            raise _error("coords", f"{len(raw)} bytes for {total} float32 coordinates")
        values = np.frombuffer(raw, _F32).astype(np.float32)
    else:
        scales = np.asarray(message.scales, np.float32)
        if scales.size != len(counts):
            raise _error("scales", f"{scales.size} scales for {len(counts)} blocks")
        if not np.all(np.isfinite(scales) & (scales >= 0)):
            raise _error("scales", "must be finite and >= 0")
        name = _NAMES[message.encoding]
        if len(raw) != (total if name == "int8" else (total + 1) // 2):
            raise _error("coords", f"{len(raw)} bytes for {total} {name} coordinates")
        codes = np.frombuffer(raw, np.int8) if name == "int8" else unpack_int4(raw, total)
        per_code = np.repeat(scales, counts)  # (total,)
        levels = LEVELS[name]
        bad = np.flatnonzero(
            (np.abs(codes.astype(np.int16)) > levels) | ((codes != 0) & (per_code == 0.0))
        )
        if bad.size:
            raise _error("coords", f"coordinate {int(bad[0])}: code {codes[bad[0]]} is invalid")
        with np.errstate(over="ignore"):
            values = codes.astype(np.float32) * per_code  # float32(code * scale), one rounding
    if not np.all(np.isfinite(values)):
        raise _error("coords", "holds non-finite values (or a scale that overflows)")
    if max_abs is not None and values.size and float(np.abs(values).max()) > max_abs:
        raise _error("coords", f"|gamma| = {float(np.abs(values).max()):.6g} > {max_abs:.6g}")
    bounds = np.cumsum([0, *counts])
    return tuple(values[bounds[b] : bounds[b + 1]] for b in range(len(counts)))


def decode_ferret_reply(
    data: bytes,
    *,
    num_blocks: int,
    pool_size: int,
    pool_id: int | None = None,
    round: int | None = None,
    num_clients: int | None = None,
    encoding: str | None = None,
    max_abs: float | None = None,
) -> FerretReplyMessage:
    """Parse and validate a Ferret reply against the run's configuration.

    Parameters
    ----------
    data : bytes
        A serialized ``fedft.v1.FerretReply``.
    num_blocks, pool_size : int
        The run's block count and ``K``: the reply must have ``num_blocks`` counts, each in
        ``[2, K]``, so it holds at most ``num_blocks * K`` coordinates.
    pool_id, round : int, optional
        When given, the reply must name this pool and round.
    num_clients : int, optional
        When given, the client index must be below it.
    encoding : str, optional
        When given, the run's encoding (``int8`` / ``int4`` / ``fp32``): the reply must use it.
    max_abs : float, optional
        When given, every ``|gamma|`` must be at most this (e.g. ``sqrt(d_b)`` times the run's
        update-norm bound, Cauchy-Schwarz with ``|v_i| = 1``).

    Raises
    ------
    WireError
        On an unparsable message, a wrong version, pool, round, client or encoding, a block count
        or a seed count other than the run's bounds, byte lengths that do not match the counts, a
        missing, negative or non-finite scale, a -128 (int8) or -8 (int4) code, a nonzero int4
        padding nibble, or a non-finite coordinate.
    """
    message = ferret_pb2.FerretReply()
    try:
        message.ParseFromString(bytes(data))
    except DecodeError as error:
        raise _error("message", f"not a FerretReply ({error})") from None
    if message.version != WIRE_VERSION:
        raise _error("version", f"expected {WIRE_VERSION}, got {message.version}")
    for field, expected in (("pool_id", pool_id), ("round", round)):
        if expected is not None and getattr(message, field) != expected:
            raise _error(field, f"expected {expected}, got {getattr(message, field)}")
    if num_clients is not None and message.client >= num_clients:
        raise _error("client", f"{message.client} outside the scenario's {num_clients} clients")
    if message.num_blocks != num_blocks or len(message.seed_counts) != num_blocks:
        raise _error(
            "num_blocks",
            f"{message.num_blocks} blocks and {len(message.seed_counts)} counts, the run has "
            f"{num_blocks}",
        )
    counts = list(message.seed_counts)
    bad = [b for b, n in enumerate(counts) if not MIN_SEEDS <= n <= pool_size]
    if bad:
        raise _error("seed_counts", f"block {bad[0]}: {counts[bad[0]]} not in [2, {pool_size}]")
    if message.encoding not in _NAMES:
        raise _error("encoding", f"unknown value {message.encoding}")
    got = _NAMES[message.encoding]
    if encoding is not None and got != encoding:
        raise _error("encoding", f"{got!r}, but this run uses {encoding!r}")
    coords = _decode_coords(message, counts, max_abs)
    return FerretReplyMessage(
        pool_id=message.pool_id,
        round=message.round,
        client=message.client,
        encoding=got,
        coordinates=FerretCoordinates(tuple(counts), coords),
    )


def encode_ferret_history(history: Sequence[FerretRound], run_seed: int, num_blocks: int) -> bytes:
    """Serialize rounds as a ``fedft.v1.FerretHistory``."""
    message = ferret_pb2.FerretHistory(version=WIRE_VERSION, num_blocks=num_blocks)
    for entry in history:
        slots = sorted(entry.aggregate)
        message.rounds.add(
            round=entry.round,
            pool_id=seed_pool_id(run_seed, entry.round, entry.pool_size),
            pool_size=entry.pool_size,
            slots=np.asarray(slots, _U32).tobytes(),
            values=np.asarray([entry.aggregate[s] for s in slots], _F32).tobytes(),
        )
    return message.SerializeToString()


def decode_ferret_history(
    data: bytes,
    *,
    run_seed: int,
    pool_size: int,
    num_blocks: int,
    max_round: int | None = None,
) -> list[FerretRound]:
    """Parse and check a ``fedft.v1.FerretHistory`` against the run's pool, blocks and rounds.

    Raises
    ------
    WireError
        On an unparsable message, a wrong version or block count, rounds not increasing or beyond
        ``max_round``, another pool, slot and value lengths that disagree, slots not increasing or
        outside ``num_blocks * K``, or non-finite values.
    """
    kind = "ferret history"
    message = ferret_pb2.FerretHistory()
    try:
        message.ParseFromString(bytes(data))
    except DecodeError as error:
        raise _error("history", f"not a FerretHistory ({error})", kind) from None
    if message.version != WIRE_VERSION:
        raise _error("version", f"expected {WIRE_VERSION}, got {message.version}", kind)
    if message.num_blocks != num_blocks:
        raise _error("num_blocks", f"{message.num_blocks}, the run has {num_blocks}", kind)
    out, last_round = [], 0
    for entry in message.rounds:
        where = f"rounds[{entry.round}]"
        if entry.round <= last_round:
            raise _error(where, "rounds must be strictly increasing and > 0", kind)
        if max_round is not None and entry.round > max_round:
            raise _error(where, f"beyond the run's {max_round} rounds", kind)
        if entry.pool_size != pool_size:
            raise _error(f"{where}.pool_size", f"{entry.pool_size}, the run's is {pool_size}", kind)
        if entry.pool_id != seed_pool_id(run_seed, entry.round, pool_size):
            raise _error(f"{where}.pool_id", "does not match this run's seed pool", kind)
        if len(entry.slots) % 4 or len(entry.values) != len(entry.slots):
            raise _error(f"{where}.values", "slots and values lengths disagree", kind)
        slots = np.frombuffer(entry.slots, _U32).astype(np.int64)
        values = np.frombuffer(entry.values, _F32)
        if slots.size and (np.any(np.diff(slots) <= 0) or slots[-1] >= num_blocks * pool_size):
            raise _error(f"{where}.slots", "must increase and stay below num_blocks * K", kind)
        if not np.all(np.isfinite(values)):
            raise _error(f"{where}.values", "holds non-finite values", kind)
        aggregate = dict(zip(slots.tolist(), values.astype(np.float64).tolist(), strict=True))
        out.append(FerretRound(entry.round, pool_size, aggregate))
        last_round = entry.round
    return out
