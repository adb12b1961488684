"""The sparse mask of sensitive sparse zo: which weights a run perturbs, on the wire, no torch.

:class:`SparseMask` is what every party agrees on (:mod:`fedft.zo.sparse` builds and installs
it on torch models); an ONNX Runtime node decodes it, checks its digest and perturbs the same
deltas in the same order without importing torch (:mod:`fedft.edge.ort_sparse`).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedft.errors import ZoError

if TYPE_CHECKING:
    import torch

DELTA_SUFFIX = ".sparse_delta"
_MAGIC = b"FZM1"


@dataclass(frozen=True, eq=False)
class SparseMask:
    """The masked entries of each linear module: sorted flat indices into its ``(out, in)`` weight.

    ``modules`` are sorted; ``indices[i]`` is a sorted, duplicate-free int64 array of flat
    (row-major) positions in ``shapes[i]``.
    """

    modules: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    indices: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if list(self.modules) != sorted(self.modules) or len(set(self.modules)) != len(
            self.modules
        ):
            raise ZoError("sparse mask: module names must be sorted and distinct")
        if not len(self.modules) == len(self.shapes) == len(self.indices):
            raise ZoError("sparse mask: one shape and one index array per module")
        for name, (rows, cols), idx in zip(self.modules, self.shapes, self.indices, strict=True):
            if idx.dtype != np.int64 or idx.ndim != 1 or not idx.size:
                raise ZoError(f"sparse mask: {name}: indices must be a non-empty 1-d int64 array")
            if idx[0] < 0 or idx[-1] >= rows * cols or np.any(np.diff(idx) <= 0):
                raise ZoError(f"sparse mask: {name}: indices must be sorted, distinct, in range")

    @property
    def numel(self) -> int:
        """``m``: the masked entries in all (the trainable values)."""
        return sum(int(idx.size) for idx in self.indices)

    @property
    def total(self) -> int:
        """``D``: the entries of every module the mask was chosen from."""
        return sum(r * c for r, c in self.shapes)

    def encode(self) -> bytes:
        """The mask on the wire: ``FZM1``, then per module its name, shape, count and indices.

        Little-endian: ``u32 len(name)``, the UTF-8 name, ``u32 out, u32 in, u32 count``, then
        ``count`` x ``u32`` indices (so ``4 m`` bytes plus ~70 bytes a module).
        """
        cached = self.__dict__.get("_wire")
        if cached is not None:
            return cached
        parts = [_MAGIC, struct.pack("<I", len(self.modules))]
        for name, (rows, cols), idx in zip(self.modules, self.shapes, self.indices, strict=True):
            raw = name.encode()
            parts.append(struct.pack("<IIII", len(raw), rows, cols, idx.size) + raw)
            parts.append(idx.astype("<u4").tobytes())
        wire = b"".join(parts)
        self.__dict__["_wire"] = wire  # frozen: computed once
        return wire

    @classmethod
    def decode(cls, data: bytes) -> SparseMask:
        """Inverse of :meth:`encode`, raising :class:`ZoError` on a malformed message."""
        try:
            if data[:4] != _MAGIC:
                raise ZoError("sparse mask: not a fedft mask (bad magic)")
            (count,), pos = struct.unpack_from("<I", data, 4), 8
            modules, shapes, indices = [], [], []
            for _ in range(count):
                size, rows, cols, n = struct.unpack_from("<IIII", data, pos)
                pos += 16
                modules.append(data[pos : pos + size].decode())
                pos += size
                idx = np.frombuffer(data, "<u4", n, pos).astype(np.int64)
                pos += 4 * n
                shapes.append((rows, cols))
                indices.append(idx)
            if pos != len(data):
                raise ZoError(f"sparse mask: {len(data) - pos} bytes after the last module")
        except (struct.error, ValueError, UnicodeDecodeError) as err:
            raise ZoError(f"sparse mask: malformed message ({err})") from None
        return cls(tuple(modules), tuple(shapes), tuple(indices))

    def digest(self) -> str:
        """SHA-256 of :meth:`encode`, hex: what the server announces every round."""
        if "_digest" not in self.__dict__:
            self.__dict__["_digest"] = hashlib.sha256(self.encode()).hexdigest()
        return self.__dict__["_digest"]

    def initial_state(self) -> dict[str, torch.Tensor]:
        """Round 0's trainable state: ``delta = 0`` for every module (the same in every process)."""
        import torch  # here: a torch-free ONNX Runtime node uses the mask without it

        return {
            name + DELTA_SUFFIX: torch.zeros(int(idx.size), dtype=torch.float32)
            for name, idx in zip(self.modules, self.indices, strict=True)
        }

    def initial_arrays(self) -> dict[str, np.ndarray]:
        """:meth:`initial_state` as float32 numpy arrays (an ONNX Runtime node's copy)."""
        return {
            name + DELTA_SUFFIX: np.zeros(int(idx.size), dtype=np.float32)
            for name, idx in zip(self.modules, self.indices, strict=True)
        }
