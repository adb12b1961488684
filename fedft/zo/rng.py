"""The portable perturbation generator: Rademacher signs as a pure function of (seed, index).

Zeroth-order training (MeZO, Malladi et al., 2023, arXiv 2305.17333; FedKSeed, Qin et al., ICML
2024, arXiv 2312.06353) needs every party to regenerate the same perturbation ``z`` from a seed.
torch's own generators differ between CPU and CUDA, and a phone or an ONNX Runtime client has
neither, so ``z`` is defined here with 32-bit integer arithmetic only (generator
``rademacher-mix32-v1``; the normative text is the comment in ``protos/fedft/v1/zo.proto``)::

    mix32(x) = x ^= x >> 16; x *= 0x045D9F3B; x ^= x >> 16; x *= 0x045D9F3B; x ^= x >> 16
    k1 = mix32(s0 ^ 0x9E3779B9);  k2 = mix32(s1 ^ k1 ^ 0x85EBCA6B)       (s0, s1: seed halves)
    word(w) = mix32(((w0 ^ k1 ^ mix32(w1 ^ 0xC2B2AE35)) * 0x045D9F3B) ^ k2)   (w0, w1: halves of w)
    z_i = +1 if bit (i mod 32) of word(i >> 5) is 0, else -1               (bit 0 = LSB)

(uint32 wrap-around arithmetic, logical shifts; ``mix32`` is Thomas Mueller's integer hash and a
bijection, so ``(s0, s1) -> (k1, k2)`` is one too.) One hash yields 32 signs. The numpy reference
holds the uint32 values in int64 (every product is below ``2**32 * 0x045D9F3B < 2**59``, so nothing
overflows) and masks them; torch holds them in int32, whose wrap-around add, multiply and xor give
the same bits at half the memory traffic (checked against the reference and the committed test
vectors in ``tests/unit/test_rng.py``). Importing this module needs numpy only: the torch
functions import torch when called, so a device without torch (an ONNX Runtime one) uses the numpy
ones.

A *layout* is the ordered list of trainable tensors; element ``j`` of tensor ``t`` (row-major) has
the global index ``offset_t + j``, with ``offset_t`` the total size of the tensors before it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedft.errors import FedftError

if TYPE_CHECKING:  # torch is imported where a torch path runs: numpy devices need none
    import torch

GENERATOR = "rademacher-mix32-v1"
MASK32 = 0xFFFFFFFF
MIX_MULTIPLIER = 0x045D9F3B
SEED_SALT = 0x9E3779B9
KEY_SALT = 0x85EBCA6B
HIGH_WORD_SALT = 0xC2B2AE35
MAX_SEED = 2**64 - 1
MAX_INDEX = 2**62  # element indices stay far below int64 overflow
DEFAULT_CHUNK = 1 << 20  # elements per pass; a multiple of 32

Layout = list[tuple[str, tuple[int, ...]]]


class PerturbationError(FedftError, ValueError):
    """A seed, an index range, a scale or a tensor cannot be perturbed."""


def mix32(x: int) -> int:
    """Mix a 32-bit integer (Thomas Mueller's integer hash, two multiply-xorshift rounds).

    Parameters
    ----------
    x : int
        Value in ``[0, 2**32)``.

    Returns
    -------
    int
        The mixed value, in ``[0, 2**32)``; ``mix32`` is a bijection of the 32-bit integers.
    """
    x ^= x >> 16
    x = (x * MIX_MULTIPLIER) & MASK32
    x ^= x >> 16
    x = (x * MIX_MULTIPLIER) & MASK32
    return x ^ (x >> 16)


def seed_keys(seed: int) -> tuple[int, int]:
    """Return the two 32-bit keys ``(k1, k2)`` of a 64-bit seed (a bijection of the seeds).

    Raises
    ------
    PerturbationError
        If ``seed`` is not an integer in ``[0, 2**64)``.
    """
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int | np.integer)
        or not 0 <= seed <= MAX_SEED
    ):
        raise PerturbationError(f"`seed` must be an integer in [0, 2**64), got {seed!r}")
    seed = int(seed)
    k1 = mix32((seed & MASK32) ^ SEED_SALT)
    k2 = mix32((seed >> 32) ^ k1 ^ KEY_SALT)
    return k1, k2


def _check_range(start: int, count: int) -> None:
    if not 0 <= start <= MAX_INDEX or not 0 <= count <= MAX_INDEX - start:
        raise PerturbationError(
            f"element range `start`={start}, `count`={count} must lie in [0, 2**62)"
        )


def _pieces(start: int, count: int, chunk: int) -> Iterable[tuple[int, int]]:
    """Split ``[start, start + count)`` at multiples of ``chunk`` and at 2**37 (new high word)."""
    end = start + count
    while start < end:
        stop = min(end, (start // chunk + 1) * chunk, ((start >> 37) + 1) << 37)
        yield start, stop - start
        start = stop


def _mix32_inplace(x: np.ndarray | torch.Tensor) -> None:
    x ^= x >> 16
    x *= MIX_MULTIPLIER
    x &= MASK32
    x ^= x >> 16
    x *= MIX_MULTIPLIER
    x &= MASK32
    x ^= x >> 16


def _first_key(k1: int, word: int) -> int:
    return k1 ^ mix32((word >> 32) ^ HIGH_WORD_SALT)


def hash_words_numpy(seed: int, first_word: int, count: int) -> np.ndarray:
    """Return ``word(w)`` for ``w`` in ``[first_word, first_word + count)`` as int64 (numpy).

    The range must not cross a multiple of ``2**32`` words (callers split there).
    """
    k1, k2 = seed_keys(seed)
    x = np.arange(first_word & MASK32, (first_word & MASK32) + count, dtype=np.int64)
    x ^= _first_key(k1, first_word)
    x = (x * MIX_MULTIPLIER) & MASK32
    x ^= k2
    _mix32_inplace(x)
    return x


def rademacher_numpy(seed: int, start: int, count: int) -> np.ndarray:
    """Return the signs ``z_i`` for ``i`` in ``[start, start + count)`` as int8 (+1 / -1).

    Parameters
    ----------
    seed : int
        Perturbation seed in ``[0, 2**64)``.
    start, count : int
        First global element index and number of elements.

    Returns
    -------
    np.ndarray
        Shape ``(count,)``, dtype int8.

    Examples
    --------
    >>> rademacher_numpy(0, 0, 8).tolist()
    [1, 1, 1, -1, -1, -1, 1, -1]
    """
    _check_range(start, count)
    out = np.empty(count, dtype=np.int8)
    shifts = np.arange(32, dtype=np.int64)
    for piece_start, n in _pieces(start, count, DEFAULT_CHUNK):
        lead = piece_start & 31
        words = hash_words_numpy(seed, piece_start >> 5, (lead + n + 31) >> 5)
        bits = (words[:, None] >> shifts) & 1  # (words, 32): bit b of word w is element 32w + b
        signs = (1 - 2 * bits).astype(np.int8).reshape(-1)
        out[piece_start - start : piece_start - start + n] = signs[lead : lead + n]
    return out


def _int32(value: int) -> int:
    """The int32 whose two's-complement bits are the uint32 ``value``."""
    value &= MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


def _low_bytes_first(memory: torch.Tensor, byteorder: str) -> torch.Tensor:
    """The bytes of 32-bit words, low byte first, from their in-memory uint8 view."""
    if byteorder == "little":
        return memory
    return memory.view(-1, 4).flip(1).reshape(-1)


class _SignStream:
    """Reusable buffers that turn hash words into signs, one chunk at a time (torch, any device).

    The uint32 words are held in int32 tensors: addition, multiplication and xor of two's-complement
    int32 give the uint32 result's bits (wrap-around), and a logical right shift is an arithmetic
    one masked to the bits shifted in. The 4 bytes of each word are read through a little-endian
    uint8 view (byte ``j`` holds elements ``32 w + 8 j ..``), then each byte picks its 8 int8 signs
    from a 2 KiB table. For a chunk of ``n`` elements the extra memory is ``n`` bytes of int8
    signs, ``4 n`` bytes of float32 signs and ``n / 4`` bytes of words and byte indices. Per chunk:
    15 int32 ops on ``n / 32`` words, a byte-to-index copy and a gather on ``n / 8`` bytes, an int8
    -> float32 copy and the add: about 1.5x a plain ``w.add_(u)`` on one CPU thread
    (``benchmarks/zo_perturb.py``), against about 15x for ``torch.randn`` + ``add_``.
    """

    _tables: dict[torch.device, torch.Tensor] = {}

    def __init__(self, chunk: int, device: torch.device) -> None:
        import torch

        words = chunk // 32 + 2
        self.device = device
        self.counter = torch.arange(words, dtype=torch.int32, device=device)
        self.x = torch.empty(words, dtype=torch.int32, device=device)
        self.tmp = torch.empty(words, dtype=torch.int32, device=device)
        self.byte_index = torch.empty(4 * words, dtype=torch.int32, device=device)
        self.signs = torch.empty(32 * words, dtype=torch.int8, device=device)
        self.float_signs: torch.Tensor | None = None

    @classmethod
    def table(cls, device: torch.device) -> torch.Tensor:
        """Entry ``v``: the 8 int8 signs of the bits of byte ``v`` (LSB first), as one int64.

        2 KiB, so it stays in L1 while the weights stream through the cache.
        """
        import torch

        if device not in cls._tables:
            values = torch.arange(256, device=device).unsqueeze(1)
            bits = (values >> torch.arange(8, device=device)) & 1  # (256, 8)
            signs = (1 - 2 * bits).to(torch.int8).contiguous()
            cls._tables[device] = signs.view(torch.int64).view(-1)  # (256,): bytes reinterpreted
        return cls._tables[device]

    def _xorshift16_(self, x: torch.Tensor) -> None:
        """``x ^= x >> 16`` with a logical shift of the uint32 held in ``x``."""
        import torch

        tmp = self.tmp[: x.numel()]
        torch.bitwise_right_shift(x, 16, out=tmp)
        tmp &= 0xFFFF
        x ^= tmp

    def int8(self, keys: tuple[int, int], start: int, count: int) -> torch.Tensor:
        """Signs of ``[start, start + count)`` (within one 2**37 block) as an int8 view."""
        import torch

        k1, k2 = keys
        lead, first_word = start & 31, start >> 5
        words = (lead + count + 31) >> 5
        x = self.x[:words]
        torch.add(self.counter[:words], _int32(first_word), out=x)  # w0, below 2**32 in a block
        x ^= _int32(_first_key(k1, first_word))
        x.mul_(MIX_MULTIPLIER)
        x ^= _int32(k2)
        for _ in range(2):  # mix32
            self._xorshift16_(x)
            x.mul_(MIX_MULTIPLIER)
        self._xorshift16_(x)
        byte_index = self.byte_index[: 4 * words]
        byte_index.copy_(_low_bytes_first(x.view(torch.uint8), sys.byteorder))
        signs = self.signs[: 32 * words]
        torch.index_select(self.table(self.device), 0, byte_index, out=signs.view(torch.int64))
        return signs[lead : lead + count]

    def add_(self, target: torch.Tensor, signs: torch.Tensor, scale32: float) -> None:
        """``target += scale32 * signs``, computed in float32 (float64) and rounded once."""
        import torch

        # float32 signs: with int8 signs torch casts them to a new float tensor each time, and
        # with 16-bit tensors it would compute in 16 bits, rounding the scale to 16 bits first
        if self.float_signs is None or self.float_signs.device != target.device:
            self.float_signs = torch.empty(self.signs.numel(), device=target.device)
        values = self.float_signs[: signs.numel()]
        values.copy_(signs)
        target.add_(values, alpha=scale32)


def rademacher_torch(
    seed: int, start: int, count: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Return the signs ``z_i`` for ``i`` in ``[start, start + count)`` as an int8 tensor.

    Bit-identical to :func:`rademacher_numpy`; runs on any device (integer ops, no torch RNG).

    Parameters
    ----------
    seed : int
        Perturbation seed in ``[0, 2**64)``.
    start, count : int
        First global element index and number of elements.
    device : torch.device or str, optional
        Where to compute; CPU by default.

    Returns
    -------
    torch.Tensor
        Shape ``(count,)``, dtype int8.
    """
    import torch

    _check_range(start, count)
    keys = seed_keys(seed)
    device = torch.device("cpu" if device is None else device)
    out = torch.empty(count, dtype=torch.int8, device=device)
    stream = _SignStream(min(count, DEFAULT_CHUNK), device)
    for piece_start, n in _pieces(start, count, DEFAULT_CHUNK):
        out[piece_start - start : piece_start - start + n] = stream.int8(keys, piece_start, n)
    return out


def float32_scale(scale: float) -> float:
    """Round ``scale`` to the nearest float32 (the value every runtime applies), checking it.

    Raises
    ------
    PerturbationError
        If ``scale`` is not finite in float32.
    """
    with np.errstate(over="ignore"):
        scale32 = float(np.float32(scale)) if math.isfinite(scale) else math.inf
    if not math.isfinite(scale32):
        raise PerturbationError(f"`scale` must be finite in float32, got {scale!r}")
    return scale32


def layout_of(named_tensors: Iterable[tuple[str, torch.Tensor | np.ndarray]]) -> Layout:
    """Return the layout ``[(name, shape), ...]`` of tensors, in the given order."""
    return [(name, tuple(t.shape)) for name, t in named_tensors]


def layout_offsets(layout: Layout) -> list[int]:
    """Return the global index of each tensor's first element (plus the total size at the end)."""
    offsets = [0]
    for _, shape in layout:
        offsets.append(offsets[-1] + math.prod(shape))
    return offsets


def perturbation_numpy(seed: int, layout: Layout) -> dict[str, np.ndarray]:
    """Return ``z`` for every tensor of a layout, int8 and shaped like the tensor (reference)."""
    offsets = layout_offsets(layout)
    return {
        name: rademacher_numpy(seed, offsets[t], offsets[t + 1] - offsets[t]).reshape(shape)
        for t, (name, shape) in enumerate(layout)
    }


def _check_tensor(index: int, t: Any) -> None:  # a torch.Tensor or a numpy array
    numpy = isinstance(t, np.ndarray)
    contiguous = t.flags.c_contiguous if numpy else t.is_contiguous()
    floating = t.dtype.kind == "f" if numpy else t.is_floating_point()
    if not contiguous or not floating:
        raise PerturbationError(
            f"tensor {index} of the layout must be contiguous floating point, "
            f"got dtype {t.dtype} (contiguous={contiguous})"
        )


def perturb_(
    tensors: Sequence[torch.Tensor], seed: int, scale: float, *, chunk: int = DEFAULT_CHUNK
) -> None:
    r"""Add ``scale * z(seed)`` in place to the tensors of a layout: ``w \leftarrow w + s z``.

    ``s = float32(scale)``; each element gets ``w + s`` or ``w - s`` computed in float32 (or the
    tensor's dtype if wider) and rounded once to the tensor's dtype, so the result does not depend
    on the device, the chunk size or the thread count. Extra memory is ``O(chunk)``.

    Parameters
    ----------
    tensors : Sequence[torch.Tensor]
        The layout's tensors in order: contiguous, floating point, any device.
    seed : int
        Perturbation seed in ``[0, 2**64)``.
    scale : float
        Step ``s`` along ``z``.
    chunk : int, optional
        Elements generated per pass (rounded up to a multiple of 32).

    Examples
    --------
    >>> w = [torch.zeros(3), torch.zeros(2, 2)]
    >>> perturb_(w, seed=0, scale=0.5)
    >>> torch.cat([t.view(-1) for t in w]).tolist()
    [0.5, 0.5, 0.5, -0.5, -0.5, -0.5, 0.5]
    """
    scale32 = float32_scale(scale)
    keys = seed_keys(seed)
    chunk = max(32, (chunk + 31) // 32 * 32)
    flats = []
    for index, tensor in enumerate(tensors):
        _check_tensor(index, tensor)
        flats.append(tensor.view(-1))
    offsets = layout_offsets([("", tuple(flat.shape)) for flat in flats])
    if offsets[-1] == 0:
        return
    import torch

    stream = _SignStream(min(chunk, offsets[-1]), flats[0].device)
    first = 0  # the first tensor that is not done yet
    with torch.no_grad():
        # one sign generation per chunk of the concatenated layout, shared by the (possibly many,
        # small) tensors that overlap it
        for start, n in _pieces(0, offsets[-1], chunk):
            signs = stream.int8(keys, start, n)
            end = start + n
            for t in range(first, len(flats)):
                if offsets[t] >= end:
                    break
                low, high = max(start, offsets[t]), min(end, offsets[t + 1])
                if high > low:
                    target = flats[t][low - offsets[t] : high - offsets[t]]
                    stream.add_(target, signs[low - start : high - start], scale32)
                if offsets[t + 1] <= end:
                    first = t + 1


def perturb_numpy_(
    arrays: Sequence[np.ndarray], seed: int, scale: float, *, chunk: int = DEFAULT_CHUNK
) -> None:
    """Add ``scale * z(seed)`` in place to numpy arrays (same result as :func:`perturb_`).

    For clients without torch (e.g. an ONNX Runtime forward-only client): ``w + float32(scale) z``
    computed in float32 (float64 for float64 arrays) and rounded once, as :func:`perturb_` does.
    """
    scale32 = float32_scale(scale)
    offset = 0
    for index, array in enumerate(arrays):
        _check_tensor(index, array)
        flat = array.reshape(-1)
        wide = np.promote_types(array.dtype, np.float32)  # float16 is computed in float32
        for piece_start, n in _pieces(offset, flat.size, max(32, chunk)):
            z = rademacher_numpy(seed, piece_start, n).astype(wide)
            piece = flat[piece_start - offset : piece_start - offset + n]
            piece[...] = (piece.astype(wide) + wide.type(scale32) * z).astype(array.dtype)
        offset += flat.size
