r"""A client's Ferret coordinates, the server's aggregate per (block, seed), and its replay.

Client ``k`` (Ferret, Shu et al., ICML 2025, arXiv 2409.06277, Alg. 1) sends, per block ``b``, the
raw coordinates ``gamma_{k,b,j} = <Delta_{k,b}, v_{b, s_j}>`` of its window of pool indices
``s_j`` (:func:`client_coordinates`). The server scales them by ``c_{k,b}`` (it knows ``n_{k,b}``
and ``d_b``, so a client cannot choose its own scale) and sums them per *slot* ``b K + s``, weighted
as FedAvg (:func:`aggregate_coordinates`):

.. math::

    a_{b,s} = \sum_k p_k\, c_{k,b} \sum_{j : s_{k,b,j} = s} \gamma_{k,b,j}, \qquad
    c_{k,b} = \begin{cases} 1 / n_{k,b} & \text{unbiased} \\
                            1 / (n_{k,b} + d_b - 1) & \text{projection} \end{cases}

so ``sum_s a_{b,s} v_{b,s}`` estimates ``sum_k p_k Delta_{k,b}`` without bias (``unbiased``; see
:mod:`fedft.ferret.projection` for the variance) or with the MSE-optimal shrinkage
(``projection``). Every party applies the round as ``w_b <- w_b - eta_s sum_s a_{b,s} v_{b,s}``
(:func:`apply_round_`, server learning rate ``eta_s``), blocks in order, on the same float64 grid,
so a client that replays the history (:func:`replay_history_`) holds the server's tensors bit for
bit, in torch or numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedft.algorithms.fedavg import normalized_weights
from fedft.ferret.blocks import (
    Array,
    Block,
    FerretError,
    check_slots,
    flat_blocks,
    seed_counts,
    seed_window,
)
from fedft.ferret.projection import combine, project, subtract_
from fedft.zo.seeds import seed_pool, seed_pool_id

SCALINGS = ("unbiased", "projection")


@dataclass(frozen=True)
class FerretCoordinates:
    """One client's round: ``n_b`` and the float32 coordinates of each block (window order)."""

    counts: tuple[int, ...]
    coords: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class FerretRound:
    """One round's aggregate ``{slot b K + s: a_{b,s}}`` over ``seed_pool(run_seed, round, K)``."""

    round: int
    pool_size: int
    aggregate: Mapping[int, float]


def client_coordinates(
    start: Sequence[Array],
    end: Sequence[Array],
    blocks: Sequence[Block],
    *,
    run_seed: int,
    round: int,
    client: int,
    pool_size: int,
    counts: Sequence[int] | None = None,
) -> FerretCoordinates:
    """Project ``Delta = start - end`` (float32, zo order) block by block: a client's reply.

    Parameters
    ----------
    start, end : Sequence[np.ndarray or torch.Tensor]
        The trainable tensors at the round's start and after local training, in zo order.
    blocks : Sequence[Block]
        :func:`fedft.ferret.blocks.blocks_of` of the layout.
    run_seed, round, client, pool_size : int
        The round's pool ``seed_pool(run_seed, round, K)`` and the client's index, which set the
        windows (:func:`fedft.ferret.blocks.seed_window`).
    counts : Sequence[int], optional
        ``n_b`` per block instead of :func:`fedft.ferret.blocks.seed_counts` (``[privacy]``:
        :func:`fedft.privacy.ferret.private_counts`, which do not depend on the update).

    Returns
    -------
    FerretCoordinates
        ``n_b`` (:func:`fedft.ferret.blocks.seed_counts`) and ``gamma`` per block.
    """
    check_slots(len(blocks), pool_size)
    deltas = [a - b for a, b in zip(start, end, strict=True)]  # in the tensors' dtype (float32)
    flats = flat_blocks(deltas, blocks)
    counts = seed_counts(flats, pool_size) if counts is None else list(counts)
    pool = seed_pool(run_seed, round, pool_size)
    pool_id = seed_pool_id(run_seed, round, pool_size)
    coords = []
    for block, flat, count in zip(blocks, flats, counts, strict=True):
        window = seed_window(pool_id, round, client, block.index, count, pool_size)
        coords.append(project(flat, [pool[s] for s in window], block.start))
    return FerretCoordinates(tuple(counts), tuple(coords))


def scale_of(scaling: str, count: int, size: int) -> float:
    """``c = 1 / n`` (``unbiased``) or ``1 / (n + d - 1)`` (``projection``)."""
    if scaling == "unbiased":
        return 1.0 / count
    if scaling == "projection":
        return 1.0 / (count + size - 1)
    raise FerretError(f"`ferret.scaling` must be one of {SCALINGS}, got {scaling!r}")


def client_slots(
    reply: FerretCoordinates,
    blocks: Sequence[Block],
    *,
    pool_id: int,
    round: int,
    client: int,
    pool_size: int,
    scaling: str,
) -> dict[int, float]:
    """One client's scaled coordinates ``{b K + s: c_{k,b} gamma}`` (float64), server side."""
    if len(reply.counts) != len(blocks) or len(reply.coords) != len(blocks):
        raise FerretError(f"{len(reply.counts)} blocks in the reply, the layout has {len(blocks)}")
    out: dict[int, float] = {}
    for block, count, coords in zip(blocks, reply.counts, reply.coords, strict=True):
        if len(coords) != count:
            raise FerretError(f"block {block.index}: {len(coords)} coordinates for {count} seeds")
        c = scale_of(scaling, count, block.size)
        window = seed_window(pool_id, round, client, block.index, count, pool_size)
        for s, gamma in zip(window, np.asarray(coords, np.float64).tolist(), strict=True):
            out[block.index * pool_size + s] = c * gamma
    return out


def aggregate_coordinates(
    clients: Sequence[Mapping[int, float]], weights: Sequence[float]
) -> dict[int, float]:
    """``a_slot = sum_k p_k x_{k,slot}``: float64 sums in reply order, rounded to float32.

    Slots that come to exactly 0 are dropped (applying them is a no-op).

    Raises
    ------
    FerretError
        If the counts disagree, or a sum is not finite in float32.
    """
    if len(clients) != len(weights):
        raise FerretError(f"{len(clients)} replies but {len(weights)} weights")
    totals: dict[int, float] = {}
    for p_k, slots in zip(normalized_weights(weights), clients, strict=True):
        for slot, value in slots.items():
            totals[slot] = totals.get(slot, 0.0) + p_k * value
    with np.errstate(over="ignore"):
        rounded = {s: float(np.float32(totals[s])) for s in sorted(totals)}
    bad = [s for s, a in rounded.items() if not math.isfinite(a)]
    if bad:
        raise FerretError(f"the aggregate of slot {bad[0]} is not finite in float32")
    return {s: a for s, a in rounded.items() if a != 0.0}


def apply_round_(
    tensors: Sequence[Array],
    blocks: Sequence[Block],
    entry: FerretRound,
    run_seed: int,
    server_lr: float,
) -> None:
    """``w_b <- w_b - eta_s sum_s a_{b,s} v_{b,s}`` for every block, in place (torch or numpy).

    The coefficient of a slot is ``float32(eta_s) * a`` in float64 (exact: two float32 factors);
    :func:`fedft.ferret.projection.combine` sums the directions on its exact grid.
    """
    check_slots(len(blocks), entry.pool_size)
    pool = seed_pool(run_seed, entry.round, entry.pool_size)
    lr32 = float(np.float32(server_lr))
    per_block: dict[int, list[tuple[int, float]]] = {}
    for slot in sorted(entry.aggregate):
        b, s = divmod(slot, entry.pool_size)
        if b >= len(blocks):
            raise FerretError(f"slot {slot}: block {b} outside the layout's {len(blocks)} blocks")
        per_block.setdefault(b, []).append((s, lr32 * float(np.float32(entry.aggregate[slot]))))
    for b, items in per_block.items():
        block = blocks[b]
        seeds = [pool[s] for s, _ in items]
        coefficients = np.array([c for _, c in items], np.float64)
        update = combine(coefficients, seeds, block.start, block.size, tensors[block.first])
        subtract_(tensors, block, update)


def replay_history_(
    tensors: Sequence[Array],
    blocks: Sequence[Block],
    history: Sequence[FerretRound],
    run_seed: int,
    server_lr: float,
) -> None:
    """Apply rounds in order (a client's catch-up, or the server's step)."""
    for entry in history:
        apply_round_(tensors, blocks, entry, run_seed, server_lr)


def history_bytes(num_entries: int) -> int:
    """Bytes of an aggregate history: per entry one uint32 slot and one float32 value."""
    return 8 * num_entries


def rebuild_(
    tensors: Sequence[Array],
    blocks: Sequence[Block],
    reply: FerretCoordinates,
    *,
    run_seed: int,
    round: int,
    client: int,
    pool_size: int,
    scaling: str,
    server_lr: float,
) -> None:
    """Apply one client's own update ``eta_s sum_b c_b sum_j gamma_j v_j`` to ``tensors``.

    Mixed rounds: from the round's starting factors this gives the factors the server averages
    with the first-order clients' (the client's own coordinates as a one-client aggregate).
    """
    pool_id = seed_pool_id(run_seed, round, pool_size)
    slots = client_slots(
        reply,
        blocks,
        pool_id=pool_id,
        round=round,
        client=client,
        pool_size=pool_size,
        scaling=scaling,
    )
    entry = FerretRound(round, pool_size, aggregate_coordinates([slots], [1.0]))
    apply_round_(tensors, blocks, entry, run_seed, server_lr)


def prefer_replay(num_entries: int, trainable_numel: int) -> bool:
    """A client's catch-up: the missed aggregates (True) when smaller than the fp32 factors."""
    return history_bytes(num_entries) < 4 * trainable_numel
