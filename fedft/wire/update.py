"""Encode and decode a first-order update, the ``fedft.v1.LoraUpdate`` protobuf message.

A client's LoRA factors travel as float32 (``"fp32"``, 4 bytes per value) or as int8 codes with
one float32 scale per row (``"int8"``, 1 byte per value plus 4 per row; symmetric,
``scale = max|row| / 127``). The byte layout is specified in ``protos/fedft/v1/update.proto``.
The decoder trusts nothing: a bad message raises :class:`WireError` naming the field and tensor.
The encoder takes torch tensors or numpy arrays (the same bytes for the same values), so a device
without torch can send an update.

Examples
--------
>>> import torch
>>> factors = {"m.lora_A.weight": torch.tensor([[1.27, -0.5], [0.0, 0.0]])}
>>> data = encode_update(factors, "int8")  # row scales 0.01 and 0 (all zero)
>>> decode_update(data)["m.lora_A.weight"]
tensor([[ 1.2700, -0.5000],
        [ 0.0000,  0.0000]])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from google.protobuf.message import DecodeError

from fedft.v1 import update_pb2
from fedft.wire.errors import WireError
from fedft.wire.int8 import dequantize_matrix, quantize_matrix

if TYPE_CHECKING:  # torch is imported where tensors are made: a device without torch encodes numpy
    import torch

UPDATE_WIRE_VERSION = 1
MAX_NDIM = 8
ENCODINGS = {
    "fp32": update_pb2.TENSOR_ENCODING_FP32,
    "int8": update_pb2.TENSOR_ENCODING_INT8_ROW,
}
_NAMES = {v: k for k, v in ENCODINGS.items()}
_F32 = np.dtype("<f4")


def _error(field: str, message: str, tensor: str | None = None) -> WireError:
    return WireError("update", field, message, tensor)


def _rows(shape: tuple[int, ...]) -> int:
    """Rows of a tensor read as a matrix: ``d0``, or 1 for a scalar."""
    return shape[0] if shape else 1


def quantize_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization with one float32 scale per row (``d0``).

    :func:`fedft.wire.int8.quantize_matrix` on the tensor read as a matrix:
    ``scale = float32(max|row| / 127)`` (0 when below 2**-126: the row becomes zeros) and
    ``code = clip(rint(x / scale), -127, 127)`` in float64, ties to even; then
    ``|x - dequantize_rows(code, scale)| <= scale / 2`` up to one float32 rounding.

    Parameters
    ----------
    tensor : torch.Tensor
        A finite floating tensor of any shape (read as ``rows = d0`` by ``numel / d0``).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        int8 codes of ``tensor``'s shape, and float32 scales of shape ``(rows,)``.

    Raises
    ------
    WireError
        If a value is NaN or infinite.
    """
    import torch

    shape = tuple(tensor.shape)
    rows = _rows(shape)
    cols = tensor.numel() // rows if rows else 0
    x = tensor.detach().cpu().to(torch.float64).reshape(rows, cols).numpy()  # (rows, cols)
    codes, scales = quantize_matrix(x)
    return torch.from_numpy(codes).reshape(shape), torch.from_numpy(scales)


def dequantize_rows(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``float32(code * scale)`` for every entry and its row's scale (one float32 rounding)."""
    import torch

    shape = tuple(codes.shape)
    rows = _rows(shape)
    matrix = codes.cpu().numpy().reshape(rows, codes.numel() // rows if rows else 0)
    return torch.from_numpy(dequantize_matrix(matrix, scales.cpu().numpy())).reshape(shape)


def encode_update(
    factors: Mapping[str, torch.Tensor] | Mapping[str, np.ndarray], encoding: str = "fp32"
) -> bytes:
    """Serialize a factor state as a ``fedft.v1.LoraUpdate``.

    Parameters
    ----------
    factors : Mapping[str, torch.Tensor] or Mapping[str, np.ndarray]
        Finite floating tensors (or numpy arrays) by name (sent in this order, as float32).
    encoding : {"fp32", "int8"}
        Exact float32 values, or int8 codes with one float32 scale per row.

    Returns
    -------
    bytes
        The serialized message.

    Raises
    ------
    WireError
        On an unknown encoding, no tensors, an empty name, more than 8 dimensions, a dimension of
        2**32 or more, a shape of 2**62 or more (dimensions of 0 counted as 1), a non-floating
        dtype or a non-finite value.
    """
    if encoding not in ENCODINGS:
        raise _error("encoding", f"must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    if not factors:
        raise _error("tensors", "no tensors to send")
    message = update_pb2.LoraUpdate(version=UPDATE_WIRE_VERSION)
    for name, tensor in factors.items():
        _check_layout(name, tuple(tensor.shape))
        values = _float32_values(name, tensor)
        if not bool(np.isfinite(values).all()):
            raise _error("data", "holds non-finite values (NaN or Inf)", name)
        entry = message.tensors.add(name=name, shape=values.shape, encoding=ENCODINGS[encoding])
        if encoding == "fp32":
            entry.data = values.astype(_F32, copy=False).tobytes()
        else:
            rows = _rows(values.shape)
            matrix = values.astype(np.float64).reshape(rows, values.size // rows if rows else 0)
            codes, scales = quantize_matrix(matrix)  # what quantize_rows computes
            entry.data = codes.tobytes()
            entry.scales = scales.astype(_F32, copy=False).tobytes()
    return message.SerializeToString()


def _float32_values(name: str, tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """A floating tensor's values as a C-contiguous float32 numpy array (torch casts as numpy)."""
    if isinstance(tensor, np.ndarray):
        if tensor.dtype.kind != "f":
            raise _error("data", f"dtype {tensor.dtype} is not floating", name)
        return np.ascontiguousarray(tensor, dtype=np.float32)
    if not tensor.is_floating_point():
        raise _error("data", f"dtype {tensor.dtype} is not floating", name)
    import torch

    return tensor.detach().cpu().to(torch.float32).contiguous().numpy()


def _check_layout(name: str, shape: tuple[int, ...]) -> None:
    if not name:
        raise _error("name", "must be non-empty")
    if len(shape) > MAX_NDIM:
        raise _error("shape", f"{len(shape)} dimensions, at most {MAX_NDIM}", name)
    if any(not 0 <= d < 2**32 for d in shape):
        raise _error("shape", f"dimensions must be in [0, 2**32), got {shape}", name)
    if math.prod(max(d, 1) for d in shape) >= 2**62:  # even with no element: strides overflow
        raise _error("shape", f"{shape} is larger than any tensor can be", name)


def _decode_tensor(entry: update_pb2.LoraTensor) -> torch.Tensor:
    """One tensor's float32 values, after every length, code and finiteness check."""
    name, shape = entry.name, tuple(entry.shape)
    numel = math.prod(shape)
    if entry.encoding == update_pb2.TENSOR_ENCODING_FP32:
        if entry.scales:
            raise _error("scales", "must be empty with fp32", name)
        if len(entry.data) != 4 * numel:
            raise _error("data", f"{len(entry.data)} bytes for {shape} in fp32", name)
        values = np.frombuffer(entry.data, _F32)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise _error("data", f"entry {int(bad[0])} is {values[bad[0]]}", name)
        return _tensor(values.astype(np.float32), shape)
    rows = _rows(shape)
    if len(entry.data) != numel:
        raise _error("data", f"{len(entry.data)} bytes for {shape} in int8", name)
    if len(entry.scales) != 4 * rows:
        raise _error("scales", f"{len(entry.scales)} bytes for {rows} rows", name)
    scales = np.frombuffer(entry.scales, _F32)
    bad = np.flatnonzero(~(np.isfinite(scales) & (scales >= 0)))
    if bad.size:
        raise _error("scales", f"row {int(bad[0])} has scale {scales[bad[0]]}", name)
    codes = np.frombuffer(entry.data, np.int8).reshape(rows, numel // rows if rows else 0)
    bad_at = np.argwhere((codes == -128) | ((codes != 0) & (scales == 0)[:, None]))
    if bad_at.size:
        row, col = bad_at[0]
        message = f"code {codes[row, col]} at ({row}, {col}) with row scale {scales[row]}"
        raise _error("data", message, name)
    with np.errstate(over="ignore"):
        values = dequantize_matrix(codes, scales)
    if not np.all(np.isfinite(values)):
        raise _error("scales", "code * scale overflows float32", name)
    return _tensor(values, shape)


def _tensor(values: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    return torch.from_numpy(values).reshape(shape)


def decode_update(
    data: bytes, template: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Parse and validate a ``fedft.v1.LoraUpdate``.

    Parameters
    ----------
    data : bytes
        A serialized message.
    template : Mapping[str, torch.Tensor], optional
        The global state: when given, the update must hold exactly its names and shapes.

    Returns
    -------
    dict[str, torch.Tensor]
        float32 tensors by name, in the message's order.

    Raises
    ------
    WireError
        On an unparsable message, a wrong version, no tensors, an empty or duplicate name, more
        than 8 dimensions or too large a shape, an unknown encoding, byte lengths that do not
        match the shape, a -128 code, a non-zero code in a row of scale 0, a negative or
        non-finite scale, a non-finite value, or names and shapes other than ``template``'s.
    """
    message = update_pb2.LoraUpdate()
    try:
        message.ParseFromString(bytes(data))
    except DecodeError as error:
        raise _error("message", f"not a LoraUpdate ({error})") from None
    if message.version != UPDATE_WIRE_VERSION:
        raise _error("version", f"expected {UPDATE_WIRE_VERSION}, got {message.version}")
    if not message.tensors:
        raise _error("tensors", "no tensors")
    out: dict[str, torch.Tensor] = {}
    for entry in message.tensors:
        _check_layout(entry.name, tuple(entry.shape))
        if entry.name in out:
            raise _error("name", "appears twice", entry.name)
        if entry.encoding not in _NAMES:
            raise _error("encoding", f"unknown value {entry.encoding}", entry.name)
        if template is not None:  # names and shapes bound what is decoded, before any allocation
            _check_entry(entry.name, tuple(entry.shape), template)
        out[entry.name] = _decode_tensor(entry)
    if template is not None:
        _check_template(out, template)
    return out


def _check_entry(name: str, shape: tuple[int, ...], template: Mapping[str, torch.Tensor]) -> None:
    if name not in template:
        raise _error("name", "is not a tensor of the global state", name)
    if shape != tuple(template[name].shape):
        raise _error("shape", f"{shape}, expected {tuple(template[name].shape)}", name)


def _check_template(got: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]) -> None:
    missing = [name for name in template if name not in got]
    if missing:
        raise _error("tensors", f"missing ({len(missing)} missing)", missing[0])
