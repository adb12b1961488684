r"""Project a block's update onto shared random directions, and rebuild it from the coordinates.

Ferret (Shu et al., ICML 2025, arXiv 2409.06277, Sec. 3): block ``b`` of a client's update
``Delta_b`` (``d_b`` elements) is sent as ``n_b`` coordinates ``gamma_j = <Delta_b, v_j>`` along
directions ``v_j`` that every party regenerates from the seeds of a shared pool. Here ``v_j`` is the
portable Rademacher vector of :mod:`fedft.zo.rng` on the block's global index range
``[start_b, start_b + d_b)``, so ``E[v v^T] = I`` exactly and

.. math::

    \hat\Delta_b = \frac{1}{n_b} \sum_{j=1}^{n_b} \gamma_j v_j, \qquad
    E[\hat\Delta_b] = \Delta_b, \qquad
    E\|\hat\Delta_b - \Delta_b\|^2 = \frac{d_b - 1}{n_b} \|\Delta_b\|^2

(for independent ``v_j``: ``E[(v^T \Delta)^2 \|v\|^2] = d_b \|\Delta\|^2``). The reference draws
``v`` with ``torch.manual_seed`` + ``trunc_normal_(std=1, a=-b=1/sqrt(d))``, nearly uniform on
``[-1/sqrt(d), 1/sqrt(d)]``, so ``E[v v^T] ~ I / (3 d)``; it multiplies ``gamma`` by ``d / n`` and
its server learning rate absorbs the remaining factor 1/3. With ``n_b << d_b`` the unbiased
estimate is dominated by its noise; the MSE-optimal multiple of it is ``n_b / (n_b + d_b - 1)``
(scaling ``"projection"`` in :mod:`fedft.ferret.aggregate`), close to the orthogonal projection of
``Delta_b`` onto the span of the ``v_j``, whose mean is ``(n_b / d_b) Delta_b``.

Exactness. Both products are computed in float64 on integers (fixed-point grids), where every
addition is exact whatever the summation order: any BLAS, torch or numpy callers, the same bits:

* projection: ``q_i = rint(Delta_i 2**S)`` with ``sum_i |q_i| < 2**53``, ``gamma = float32(2**-S
  (V q))`` (one rounding);
* update: ``c_j`` (float64) on a grid ``r_j = rint(c_j 2**S)`` with ``sum_j |r_j| < 2**53``,
  ``u = 2**-S (V^T r)``, then ``w <- dtype(float64(w) - u)``.

The grids lose ``~2**-(53 - log2 d)`` of the peak value, far below float32's ``2**-24``. Cost:
``O(n_b d_b)`` generator work plus one ``(n_b, d_b)`` float64 product per block, in cache-sized
chunks of about ``2**17`` bits: the generator's words are unpacked into 0/1 bits ``B``
(``V = 1 - 2 B``) and multiplied on the CPU in numpy, for torch and numpy callers alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from fedft.ferret.blocks import Array, Block, FerretError, grid_exponent
from fedft.zo.rng import HIGH_WORD_SALT, MASK32, MIX_MULTIPLIER, mix32, seed_keys

CHUNK_ELEMENTS = 1 << 17  # sign bits per chunk of the products (1 MiB of float64)
# row v: the signs 1 - 2 bit_k(v) of byte v, k = 0 (LSB) .. 7, as float64
_SIGNS_NUMPY = 1.0 - 2.0 * ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.float64)


def _keys(seeds: Sequence[int], first_word: int) -> tuple[list[int], list[int]]:
    """Per seed: the word key ``k1 ^ mix32(w1 ^ salt)`` and ``k2`` (see :mod:`fedft.zo.rng`)."""
    high = mix32((first_word >> 32) ^ HIGH_WORD_SALT)
    first, second = [], []
    for seed in seeds:
        k1, k2 = seed_keys(seed)
        first.append(k1 ^ high)
        second.append(k2)
    return first, second


def _check(start: int, count: int) -> tuple[int, int, int]:
    first_word, lead = start >> 5, start & 31
    words = (lead + count + 31) >> 5
    if count <= 0 or (first_word >> 32) != ((first_word + words - 1) >> 32):
        raise FerretError(f"block at {start} of {count} elements crosses a 2**37 boundary")
    return first_word, lead, words


def _word_hashes(keys: tuple[np.ndarray, np.ndarray], words: np.ndarray) -> np.ndarray:
    """The generator's 32-bit words ``(len(seeds), len(words))`` as little-endian bytes."""
    k1, k2 = keys
    x = words[None, :] ^ k1  # (seeds, words), int64 holding uint32 values
    x = (x * MIX_MULTIPLIER) & MASK32
    x ^= k2
    for _ in range(2):
        x ^= x >> 16
        x = (x * MIX_MULTIPLIER) & MASK32
    x ^= x >> 16
    return x.astype("<u4").view(np.uint8)  # (seeds, 4 words): byte j holds bits 8j .. 8j + 7


def _numpy_keys(seeds: Sequence[int], first_word: int) -> tuple[np.ndarray, np.ndarray]:
    k1, k2 = (np.asarray(k, np.int64)[:, None] for k in _keys(seeds, first_word))
    return k1, k2


def sign_matrix_numpy(seeds: Sequence[int], start: int, count: int) -> np.ndarray:
    """``V[j, i] = z_{start + i}(seeds[j])`` as float64 ``(len(seeds), count)`` (numpy).

    The same signs as :func:`fedft.zo.rng.rademacher_numpy`, for many seeds at once.
    """
    first_word, lead, words = _check(start, count)
    base = first_word & MASK32
    octets = _word_hashes(_numpy_keys(seeds, first_word), np.arange(base, base + words))
    signs = _SIGNS_NUMPY.take(octets, axis=0)  # (seeds, 4 words, 8)
    return signs.reshape(len(seeds), 32 * words)[:, lead : lead + count]


def _bit_chunks(
    seeds: Sequence[int], start: int, count: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(i0, i1, B)``, the bits ``B[j, i] = (1 - V[j, i0 + i]) / 2`` chunk by chunk.

    ``B`` is float64 0/1 over the padded index range ``[i0, i1)`` (index 0 is bit 0 of the
    block's first word).

    A chunk holds about :data:`CHUNK_ELEMENTS` bits, so it stays in cache between the unpacking and
    its product; ``np.unpackbits`` plus a float cast is ~5x cheaper than a table of signs.
    """
    first_word, _, words = _check(start, count)
    base = first_word & MASK32
    keys = _numpy_keys(seeds, first_word)
    step = max(1, CHUNK_ELEMENTS // (32 * max(len(seeds), 1)))
    for w in range(0, words, step):
        octets = _word_hashes(keys, np.arange(base + w, base + min(w + step, words)))
        bits = np.unpackbits(octets, axis=1, bitorder="little")  # (seeds, 32 chunk words)
        yield 32 * w, 32 * w + bits.shape[1], bits.astype(np.float64)


def _padded(q: np.ndarray, start: int, count: int) -> np.ndarray:
    """``q`` placed at bit ``start mod 32`` of its first word, zeros around (whole words)."""
    _, lead, words = _check(start, count)
    padded = np.zeros(32 * words, np.float64)
    padded[lead : lead + count] = q
    return padded


def _projected(q: np.ndarray, seeds: Sequence[int], start: int) -> np.ndarray:
    """``V q`` for an integer-valued float64 ``q`` with ``sum |q_i| < 2**53`` (exact).

    ``V = 1 - 2 B``, so ``V q = sum(q) - 2 B q``: every partial sum is an integer of magnitude
    below ``2**53`` (``2 B q`` below ``2**54``, a power-of-two multiple), hence exact in float64
    in any summation order, and equal to the dense product bit for bit.
    """
    padded = _padded(q, start, q.size)
    ones = np.zeros(len(seeds), np.float64)
    for i0, i1, bits in _bit_chunks(seeds, start, q.size):
        ones += bits @ padded[i0:i1]
    return padded.sum() - 2.0 * ones


def _combined(r: np.ndarray, seeds: Sequence[int], start: int, count: int) -> np.ndarray:
    """``V^T r`` for an integer-valued float64 ``r``, ``sum |r_j| < 2**53`` (exact, as above)."""
    _, lead, words = _check(start, count)
    ones = np.empty(32 * words, np.float64)
    for i0, i1, bits in _bit_chunks(seeds, start, count):
        ones[i0:i1] = r @ bits
    return r.sum() - 2.0 * ones[lead : lead + count]


def project(flat: Array, seeds: Sequence[int], start: int) -> np.ndarray:
    """Return ``gamma_j = float32(<Delta_b, v_j>)`` for a block's flat update (torch or numpy).

    Parameters
    ----------
    flat : np.ndarray or torch.Tensor
        The block's update ``Delta_b`` (float, finite), flattened in layout order.
    seeds : Sequence[int]
        The block's seeds (from the round's pool, :func:`fedft.ferret.blocks.seed_window`).
    start : int
        The block's global index (:attr:`fedft.ferret.blocks.Block.start`).

    Returns
    -------
    np.ndarray
        float32 ``(len(seeds),)``; the same bits from torch and numpy inputs (a torch update is
        put on its grid in torch, then multiplied on the CPU in numpy: integers, exact).
    """
    if isinstance(flat, torch.Tensor):
        count = flat.numel()
        peak = float(flat.abs().max())
    else:
        count = int(flat.size)
        peak = float(np.abs(flat).max(initial=0.0))
    if not np.isfinite(peak):
        raise FerretError("cannot project a non-finite update")
    exponent = grid_exponent(peak, 53 - count.bit_length())
    if peak == 0.0:
        return np.zeros(len(seeds), np.float32)
    scale = 2.0**exponent
    if isinstance(flat, torch.Tensor):
        q = torch.round(flat.detach().to(torch.float64).reshape(-1) * scale).cpu().numpy()
    else:
        q = np.rint(np.asarray(flat, np.float64).reshape(-1) * scale)
    return (_projected(q, seeds, start) * 2.0**-exponent).astype(np.float32)


def combine(
    coefficients: np.ndarray, seeds: Sequence[int], start: int, count: int, like: Array
) -> Array:
    """Return ``u = sum_j c_j v_j`` in float64 (exact on the grid of ``c``), typed as ``like``.

    ``c`` is put on a grid ``r_j = rint(c_j 2**S)`` with ``sum_j |r_j| < 2**53``, so ``V^T r`` is
    exact in float64 whatever the order of its additions; ``u = 2**-S V^T r`` (computed in numpy
    on the CPU, then moved to ``like``'s device for a torch ``like``).
    """
    coefficients = np.asarray(coefficients, np.float64)
    if len(coefficients) != len(seeds):
        raise FerretError(f"{len(coefficients)} coefficients for {len(seeds)} seeds")
    if not np.all(np.isfinite(coefficients)):
        raise FerretError("cannot apply non-finite coefficients")
    peak = float(np.abs(coefficients).max(initial=0.0))
    if peak == 0.0:
        u = np.zeros(count, np.float64)
    else:
        exponent = grid_exponent(peak, 53 - len(seeds).bit_length())
        grid = np.rint(coefficients * 2.0**exponent)
        u = _combined(grid, seeds, start, count) * 2.0**-exponent
    if isinstance(like, torch.Tensor):
        return torch.from_numpy(u).to(like.device)
    return u


def subtract_(tensors: Sequence[Array], block: Block, update: Array) -> None:
    """``w <- dtype(float64(w) - u)`` on the block's tensors, in place (one rounding)."""
    offset = 0
    for t in range(block.first, block.last):
        tensor = tensors[t]
        if isinstance(tensor, torch.Tensor):
            n = tensor.numel()
            piece = torch.as_tensor(update[offset : offset + n]).reshape(tensor.shape)
            with torch.no_grad():
                tensor.copy_((tensor.detach().to(torch.float64) - piece).to(tensor.dtype))
        else:
            n = tensor.size
            piece_np = np.asarray(update[offset : offset + n]).reshape(tensor.shape)
            tensor[...] = (tensor.astype(np.float64) - piece_np).astype(tensor.dtype)
        offset += n
