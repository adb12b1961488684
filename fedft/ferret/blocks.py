r"""Ferret's blocks and seed allotment: which directions each block of a client's update gets.

Ferret (Shu et al., ICML 2025, "Ferret: Federated Full-Parameter Tuning at Scale for Large Language
Models", arXiv 2409.06277) groups the trainable tensors, in the fixed zo order
(:func:`fedft.wire.order.zo_order`), into consecutive *blocks* of about 0.9 x the median tensor
size (:func:`blocks_of`), and gives block ``b`` of a client's update ``Delta = start - end``

.. math:: n_b = \max\!\left(\left\lfloor K \frac{\|\Delta_b\|}{\max_j \|\Delta_j\|}
          \right\rfloor, 2\right) \quad (\le K)

seeds of the round's pool of ``K`` (:func:`seed_counts`). The norms are measured exactly on a
fixed-point grid (below), so every runtime (torch, numpy) gets the same counts, bit for bit.

Which seeds: block ``b`` of client ``c`` takes the window of ``n_b`` consecutive pool indices
(mod ``K``) starting at a derived offset (:func:`seed_window`), so no index travels on the wire
(only ``n_b``), the ``n_b`` directions are distinct, and different clients mostly use different
directions (their estimation noise averages out in the aggregate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from fedft.errors import FedftError
from fedft.wire.order import zo_order
from fedft.zo.rng import Layout
from fedft.zo.seeds import _absorb, _check_pool_size

MIN_SEEDS = 2  # the reference's floor: every block gets at least two directions
MAX_SLOTS = 2**32  # a (block, seed index) slot b * K + s travels as a uint32
MAX_ELEMENTS = 2**37  # the batched sign generator keeps every word index below 2**32
_WINDOW_DOMAIN = 3  # separates Ferret's window offsets from zo's pools (1) and step seeds (2)

Array = np.ndarray | torch.Tensor


class FerretError(FedftError, ValueError):
    """A Ferret update cannot be projected, aggregated or applied as given."""


@dataclass(frozen=True)
class Block:
    """Consecutive trainable tensors ``first .. last - 1`` (zo order), one direction space.

    ``start`` is the global index of the block's first element (the generator's index, see
    :mod:`fedft.zo.rng`) and ``size`` its element count ``d_b``.
    """

    index: int
    first: int
    last: int
    start: int
    size: int


def blocks_of(layout: Layout, block_size: int = 0) -> tuple[Block, ...]:
    """Group a layout's tensors, in order, into blocks of at most ``block_size`` elements.

    A tensor larger than the target is a block of its own; otherwise tensors join the current
    block while it stays within the target (the reference's greedy rule).

    Parameters
    ----------
    layout : Layout
        ``[(name, shape), ...]`` in zo order.
    block_size : int, optional
        Target elements per block; ``0`` (default) takes the reference's
        ``floor(0.9 x median tensor size)``.

    Returns
    -------
    tuple[Block, ...]
        The blocks in order, covering every element once.

    Raises
    ------
    FerretError
        On an empty layout, a negative ``block_size`` or more than ``2**37`` elements.
    """
    sizes = [math.prod(shape) for _, shape in layout]
    if not sizes:
        raise FerretError("no trainable tensors to split into blocks")
    if block_size < 0:
        raise FerretError(f"`ferret.block_size` must be >= 0, got {block_size}")
    if sum(sizes) > MAX_ELEMENTS:
        raise FerretError(f"{sum(sizes)} trainable elements, at most 2**37")
    target = block_size or max(1, int(0.9 * float(np.median(sizes))))
    blocks: list[Block] = []
    first, start, current = 0, 0, 0
    for t, size in enumerate(sizes):
        if current and current + size > target:
            blocks.append(Block(len(blocks), first, t, start, current))
            first, start, current = t, start + current, 0
        current += size
    blocks.append(Block(len(blocks), first, len(sizes), start, current))
    return tuple(blocks)


def check_slots(num_blocks: int, pool_size: int) -> None:
    """Raise :class:`FerretError` unless every ``b * K + s`` fits a uint32."""
    _check_pool_size(pool_size)
    if num_blocks * pool_size > MAX_SLOTS:
        raise FerretError(
            f"{num_blocks} blocks x a pool of {pool_size} seeds exceed 2**32 slots: "
            "raise ferret.block_size or lower ferret.pool_size"
        )


def _max_abs(x: Array) -> float:
    if isinstance(x, torch.Tensor):
        return float(x.abs().max()) if x.numel() else 0.0
    return float(np.abs(x).max()) if x.size else 0.0


def _check_finite(flats: Sequence[Array]) -> None:
    for b, x in enumerate(flats):
        finite = (
            bool(torch.isfinite(x).all())
            if isinstance(x, torch.Tensor)
            else bool(np.isfinite(x).all())
        )
        if not finite:
            raise FerretError(f"block {b} of the update is not finite")


def grid_exponent(peak: float, budget_bits: int) -> int:
    """The ``S`` with ``peak * 2**S < 2**budget_bits``, as large as ``frexp`` allows (exact)."""
    if peak == 0.0:
        return 0
    _, exponent = math.frexp(peak)  # peak < 2**exponent
    return budget_bits - exponent


def seed_counts(flats: Sequence[Array], pool_size: int) -> list[int]:
    r"""Return ``n_b`` for each block's update (flat float tensors or arrays, torch or numpy).

    The norms are measured on one fixed-point grid: ``q_i = rint(Delta_i 2**T)`` (float64, ties to
    even) with ``T`` the largest exponent that keeps ``max_b sum_i q_i^2 < 2**62``, summed in int64
    (exact: integer sums do not depend on the order), and

    .. math:: n_b = \min\!\left(K, \max\!\left(2, \left\lfloor \sqrt{K^2 N_b / N_{max}}
              \right\rfloor\right)\right), \qquad N_b = \sum_{i \in b} q_i^2

    in Python integers (``isqrt(K^2 N_b // N_max)`` is that floor exactly). Up to the grid's
    rounding, far below float32's, this is the paper's ``floor(K ||Delta_b|| / max_j ||Delta_j||)``.

    Raises
    ------
    FerretError
        If a block's update is not finite.
    """
    _check_pool_size(pool_size)
    _check_finite(flats)
    peak = max(_max_abs(x) for x in flats)
    if peak == 0.0:
        return [MIN_SEEDS] * len(flats)
    widest = max(int(x.numel() if isinstance(x, torch.Tensor) else x.size) for x in flats)
    # every |q_i| <= 2**e with 2 e + bits(d) <= 62, so a block's sum of squares is below 2**62
    exponent = (62 - widest.bit_length()) // 2
    scale = 2.0 ** grid_exponent(peak, exponent)
    norms = []
    for x in flats:
        if isinstance(x, torch.Tensor):
            q = torch.round(x.to(torch.float64) * scale).to(torch.int64)
            norms.append(int((q * q).sum()))
        else:
            q_np = np.rint(np.asarray(x, np.float64) * scale).astype(np.int64)
            norms.append(int((q_np * q_np).sum()))
    largest = max(norms)
    counts = []
    for n in norms:
        count = math.isqrt(pool_size * pool_size * n // largest)
        counts.append(min(pool_size, max(MIN_SEEDS, count)))
    return counts


def window_offset(pool_id: int, round: int, client: int, block: int, pool_size: int) -> int:
    """First pool index of a block's window: ``absorb^4(pool_id; 3, round, c, b) mod K``.

    ``absorb`` is splitmix64's finalizer chain of :func:`fedft.zo.seeds.seed_pool`.
    """
    _check_pool_size(pool_size)
    state = _absorb(_absorb(pool_id, _WINDOW_DOMAIN, "pool_id"), round, "round")
    state = _absorb(_absorb(state, client, "client"), block, "block")
    return state % pool_size


def seed_window(
    pool_id: int, round: int, client: int, block: int, count: int, pool_size: int
) -> list[int]:
    """The ``count`` pool indices of a block: ``(offset + j) mod K`` for ``j < count``.

    Raises
    ------
    FerretError
        If ``count`` is not in ``[2, K]``.
    """
    if not MIN_SEEDS <= count <= pool_size:
        raise FerretError(f"block {block}: {count} seeds, must be in [2, {pool_size}]")
    offset = window_offset(pool_id, round, client, block, pool_size)
    return [(offset + j) % pool_size for j in range(count)]


def flat_blocks(tensors: Sequence[Array], blocks: Sequence[Block]) -> list[Array]:
    """Each block's tensors flattened and concatenated (a copy; torch or numpy as given)."""
    out: list[Array] = []
    for block in blocks:
        parts = [tensors[t].reshape(-1) for t in range(block.first, block.last)]
        first = parts[0]
        if isinstance(first, torch.Tensor):
            # (one update's tensors are all torch or all numpy; mypy cannot see that from parts[0])
            torch_parts = cast(list[torch.Tensor], parts)
            out.append(torch.cat(torch_parts) if len(parts) > 1 else first.clone())
        else:
            out.append(np.concatenate(parts))
    return out


def state_blocks(state: Mapping[str, Array], block_size: int = 0) -> tuple[Block, ...]:
    """The blocks of a trainable state (name -> tensor), its tensors taken in zo order."""
    return blocks_of([(name, tuple(state[name].shape)) for name in zo_order(state)], block_size)
