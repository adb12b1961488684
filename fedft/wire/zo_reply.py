"""Encode and decode a zeroth-order reply, the ``fedft.v1.ZoReply`` protobuf message.

The message carries one client's local steps as ``(seed index, g)``: by default ``g`` as one int8
code per step with one float32 scale, and no seed index at all (the client derives its indices from
``(pool_id, round, client, step)``, see :func:`fedft.zo.seeds.derived_seed_indices`). The
decoder trusts nothing: every field is checked and a bad message raises :class:`WireError` naming
the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError

from fedft.v1 import zo_pb2
from fedft.wire.errors import WireError
from fedft.wire.int8 import dequantize_grads, quantize_grads
from fedft.zo.seeds import ZoRecord, derived_seed_indices, index_width

WIRE_VERSION = 2  # 2: the client's index replaced its Flower node id
GRAD_ENCODINGS = {"int8": zo_pb2.ZO_GRAD_ENCODING_INT8, "fp32": zo_pb2.ZO_GRAD_ENCODING_FP32}
SEED_CHOICES = {
    "derived": zo_pb2.ZO_SEED_CHOICE_DERIVED,
    "explicit": zo_pb2.ZO_SEED_CHOICE_EXPLICIT,
}
_INDEX_DTYPES: dict[int, np.dtype[np.unsignedinteger[Any]]] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
}
_FP32 = np.dtype("<f4")


def _error(field: str, message: str) -> WireError:
    return WireError("zo reply", field, message)


@dataclass(frozen=True)
class ZoReplyMessage:
    """A decoded, validated zo reply; ``records`` hold the dequantized ``g`` values."""

    pool_id: int
    round: int
    client: int
    grad_encoding: str
    seed_choice: str
    scale: float
    records: tuple[ZoRecord, ...]


def _check_uint(field: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise _error(field, f"must be an integer in [0, 2**{bits}), got {value!r}")


_Enum = TypeVar("_Enum", bound=int)  # a protobuf enum (an int subclass in the generated stubs)


def _choice(field: str, value: str, table: Mapping[str, _Enum]) -> _Enum:
    if value not in table:
        raise _error(field, f"must be one of {sorted(table)}, got {value!r}")
    return table[value]


def encode_zo_reply(
    records: Sequence[ZoRecord],
    *,
    pool_id: int,
    round: int,
    client: int,
    pool_size: int,
    grad_encoding: str = "int8",
    seed_choice: str = "derived",
    grad_scale: float | None = None,
) -> bytes:
    """Serialize a client's records for one round.

    Parameters
    ----------
    records : Sequence[ZoRecord]
        The local steps in order.
    pool_id, round, client : int
        The seed pool (:func:`fedft.zo.seeds.seed_pool_id`), the server round and the client's
        index in the scenario (its partition id).
    pool_size : int
        ``K``; sets the index width of ``explicit`` seed indices.
    grad_encoding : {"int8", "fp32"}
        One byte per ``g`` with one scale, or the exact float32 ``g``.
    seed_choice : {"derived", "explicit"}
        ``derived`` sends no index and requires the records' indices to be the derived ones.
    grad_scale : float, optional
        The fixed int8 scale the client applied (:func:`fedft.zo.seeds.spsa_step_`); by
        default ``max|g| / 127``.

    Returns
    -------
    bytes
        The serialized ``fedft.v1.ZoReply``.
    """
    _check_uint("pool_id", pool_id, 64)
    _check_uint("round", round, 32)
    _check_uint("client", client, 32)
    _check_uint("num_steps", len(records), 32)
    message = zo_pb2.ZoReply(
        version=WIRE_VERSION,
        pool_id=pool_id,
        round=round,
        client=client,
        num_steps=len(records),
        grad_encoding=_choice("grad_encoding", grad_encoding, GRAD_ENCODINGS),
        seed_choice=_choice("seed_choice", seed_choice, SEED_CHOICES),
    )
    if grad_scale is not None and grad_encoding != "int8":
        raise _error("grad_scale", f"only applies to int8 grads, not {grad_encoding!r}")
    indices = [r.seed_index for r in records]
    for t, index in enumerate(indices):
        if not 0 <= index < pool_size:
            raise _error("seed_indices", f"step {t}: index {index} outside the pool of {pool_size}")
    if seed_choice == "explicit":
        message.seed_indices = np.asarray(indices, _INDEX_DTYPES[index_width(pool_size)]).tobytes()
    else:
        derived = derived_seed_indices(pool_id, round, client, len(records), pool_size)
        for t, (index, expected) in enumerate(zip(indices, derived, strict=True)):
            if index != expected:
                raise _error("seed_indices", f"step {t}: index {index}, derived {expected}")
    grads = [r.grad for r in records]
    if grad_encoding == "int8":
        codes, message.scale = quantize_grads(grads, grad_scale)
        message.grads = codes.tobytes()
    else:
        message.grads = np.asarray(grads, _FP32).tobytes()
    return message.SerializeToString()


def _decode_indices(message: zo_pb2.ZoReply, pool_size: int) -> list[int]:
    steps = message.num_steps
    if message.seed_choice == zo_pb2.ZO_SEED_CHOICE_DERIVED:
        if message.seed_indices:
            raise _error("seed_indices", "must be empty when seed_choice is derived")
        return derived_seed_indices(
            message.pool_id, message.round, message.client, steps, pool_size
        )
    dtype = _INDEX_DTYPES[index_width(pool_size)]
    if len(message.seed_indices) != steps * dtype.itemsize:
        raise _error(
            "seed_indices",
            f"{len(message.seed_indices)} bytes for {steps} steps of {dtype.itemsize} bytes",
        )
    indices = np.frombuffer(message.seed_indices, dtype).astype(np.int64)
    outside = np.flatnonzero(indices >= pool_size)
    if outside.size:
        t = int(outside[0])
        raise _error(
            "seed_indices", f"step {t}: index {indices[t]} outside the pool of {pool_size}"
        )
    return indices.tolist()


def _decode_grads(message: zo_pb2.ZoReply) -> list[float]:
    steps, scale, raw = message.num_steps, message.scale, message.grads
    if message.grad_encoding == zo_pb2.ZO_GRAD_ENCODING_FP32:
        if scale != 0.0:
            raise _error("scale", f"must be 0 with fp32 grads, got {scale}")
        if len(raw) != 4 * steps:
            raise _error("grads", f"{len(raw)} bytes for {steps} float32 steps")
        values = np.frombuffer(raw, _FP32)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise _error("grads", f"step {int(bad[0])} is {values[bad[0]]}")
        return values.astype(np.float64).tolist()
    if not (math.isfinite(scale) and scale >= 0.0):
        raise _error("scale", f"must be finite and >= 0, got {scale}")
    if len(raw) != steps:
        raise _error("grads", f"{len(raw)} bytes for {steps} int8 steps")
    codes = np.frombuffer(raw, np.int8)
    bad = np.flatnonzero((codes == -128) | ((codes != 0) & (scale == 0.0)))
    if bad.size:
        t = int(bad[0])
        raise _error("grads", f"step {t}: code {codes[t]} with scale {scale}")
    with np.errstate(over="ignore"):
        grads = dequantize_grads(codes, scale)
    bad = np.flatnonzero(~np.isfinite(grads))
    if bad.size:  # a finite scale near float32's max times a code overflows
        t = int(bad[0])
        raise _error("scale", f"step {t}: code {codes[t]} * scale {scale} overflows float32")
    return grads


def _check_expected(
    message: zo_pb2.ZoReply,
    encodings: dict[zo_pb2.ZoGradEncoding, str],
    choices: dict[zo_pb2.ZoSeedChoice, str],
    grad_encoding: str | None,
    seed_choice: str | None,
    grad_scale: float | None,
) -> None:
    """Refuse a reply whose encoding, seed choice or int8 scale is not the run's."""
    got = encodings[message.grad_encoding]
    if grad_encoding is not None and got != grad_encoding:
        raise _error("grad_encoding", f"{got!r}, but this run uses {grad_encoding!r}")
    choice = choices[message.seed_choice]
    if seed_choice is not None and choice != seed_choice:
        raise _error("seed_choice", f"{choice!r}, but this run uses {seed_choice!r}")
    if grad_scale is not None and got == "int8":
        fixed = float(np.float32(grad_scale))
        if message.scale != fixed:
            raise _error("scale", f"{message.scale:.9g}, but this run's fixed scale is {fixed:.9g}")


def decode_zo_reply(
    data: bytes,
    pool_size: int,
    max_steps: int,
    *,
    pool_id: int | None = None,
    round: int | None = None,
    num_clients: int | None = None,
    grad_encoding: str | None = None,
    seed_choice: str | None = None,
    grad_scale: float | None = None,
    grad_clip: float | None = None,
) -> ZoReplyMessage:
    """Parse and validate a zo reply.

    Parameters
    ----------
    data : bytes
        A serialized ``fedft.v1.ZoReply``.
    pool_size : int
        ``K`` of the round's seed pool: indices must be below it.
    max_steps : int
        The local steps the server announced: a reply with more is rejected.
    pool_id, round : int, optional
        When given, the reply must name this pool and round.
    num_clients : int, optional
        When given, the reply's client index must be below it.
    grad_encoding, seed_choice : str, optional
        When given, the reply must use this encoding (``int8`` / ``fp32``) and seed choice
        (``derived`` / ``explicit``): the run's configuration, not the client's choice.
    grad_scale : float, optional
        The run's fixed int8 scale (``zo.grad_clip / 127``): an int8 reply must carry exactly its
        float32 value, so no client can scale its steps up.
    grad_clip : float, optional
        When given, every decoded ``|g|`` must be at most this (fp32 replies; an int8 reply at the
        fixed scale is bounded by construction).

    Returns
    -------
    ZoReplyMessage
        The header fields and the records with dequantized ``g``.

    Raises
    ------
    WireError
        On an unparsable message, a wrong version, pool or round, an unknown encoding, more steps
        than ``max_steps``, a client index outside the scenario, byte lengths that do not match
        ``num_steps``, a seed index outside the pool, a non-finite or negative scale, a -128 code
        or a non-finite float32 ``g``; an encoding, seed choice or scale other than the run's, or
        a ``|g|`` above ``grad_clip``. Sizes are checked before anything is derived or allocated.
    """
    message = zo_pb2.ZoReply()
    try:
        message.ParseFromString(bytes(data))
    except DecodeError as error:
        raise _error("message", f"not a ZoReply ({error})") from error
    if message.version != WIRE_VERSION:
        raise _error("version", f"expected {WIRE_VERSION}, got {message.version}")
    for field, expected in (("pool_id", pool_id), ("round", round)):
        if expected is not None and getattr(message, field) != expected:
            raise _error(field, f"expected {expected}, got {getattr(message, field)}")
    if num_clients is not None and message.client >= num_clients:
        raise _error("client", f"{message.client} outside the scenario's {num_clients} clients")
    if message.num_steps > max_steps:
        raise _error("num_steps", f"{message.num_steps} steps, at most {max_steps} announced")
    encodings = {v: k for k, v in GRAD_ENCODINGS.items()}
    choices = {v: k for k, v in SEED_CHOICES.items()}
    if message.grad_encoding not in encodings:
        raise _error("grad_encoding", f"unknown value {message.grad_encoding}")
    if message.seed_choice not in choices:
        raise _error("seed_choice", f"unknown value {message.seed_choice}")
    _check_expected(message, encodings, choices, grad_encoding, seed_choice, grad_scale)
    grads = _decode_grads(message)  # checks the byte lengths against num_steps first
    if grad_clip is not None:
        over = np.flatnonzero(np.abs(np.asarray(grads, np.float64)) > grad_clip)
        if over.size:
            t = int(over[0])
            raise _error("grads", f"step {t}: |g| = {abs(grads[t]):.6g} > zo.grad_clip")
    indices = _decode_indices(message, pool_size)
    return ZoReplyMessage(
        pool_id=message.pool_id,
        round=message.round,
        client=message.client,
        grad_encoding=encodings[message.grad_encoding],
        seed_choice=choices[message.seed_choice],
        scale=message.scale,
        records=tuple(ZoRecord(i, g) for i, g in zip(indices, grads, strict=True)),
    )
