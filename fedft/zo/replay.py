r"""Aggregating zo records, and replaying them: the server's step, a client's catch-up, a rebuild.

FedKSeed (Qin et al., ICML 2024, arXiv 2312.06353): the server sums ``g`` per seed
(:func:`aggregate_records`), and the global model is the base replayed with every round's
aggregate (:func:`replay_history_`). A client that last synced at round ``r`` replays only rounds
``r+1 ..`` (sent as a ``fedft.v1.ZoHistory``, :mod:`fedft.wire.zo_history`) when that costs fewer
bytes than the trainable weights (:func:`prefer_replay`). In a mixed round the server rebuilds a
zo client's factors from the round's start and its records (:func:`rebuild_factors`).

``w + e z - 2e z + e z != w`` in floating point, so :func:`replay_records_` repeats all three
perturbation passes of each step, not only the update. A rebuild needs the very ``g`` the client
applied: float32 on the wire, or int8 at a scale fixed before the round (``zo.grad_scale``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from fedft.algorithms.fedavg import normalized_weights
from fedft.errors import ZoError
from fedft.wire.order import in_zo_order
from fedft.zo.config import ZoSection
from fedft.zo.rng import float32_scale, perturb_, perturb_numpy_
from fedft.zo.seeds import ZoRecord, index_width, seed_pool
from fedft.zo.step import check_eps, restore_and_step, update_coefficient

if TYPE_CHECKING:
    import torch


Params: TypeAlias = (
    "Sequence[torch.Tensor] | Sequence[np.ndarray]"  # torch tensors, or numpy (no torch)
)


def _perturb(params: Params, seed: int, scale: float) -> None:
    """``perturb_`` on torch tensors, ``perturb_numpy_`` (the same bits) on numpy arrays."""
    if params and all(isinstance(p, np.ndarray) for p in params):
        perturb_numpy_(params, seed, scale)  # type: ignore[arg-type]
    else:
        perturb_(params, seed, scale)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RoundAggregate:
    """One round's ``{seed index: a_s}`` over the pool ``seed_pool(run_seed, round, pool_size)``."""

    round: int
    pool_size: int
    aggregate: Mapping[int, float]


def replay_history_(
    params: Params,
    history: Sequence[RoundAggregate],
    run_seed: int,
    lr: float,
) -> None:
    """Replay rounds in order onto ``params`` (the catch-up of a client, or the server's step).

    ``params``: torch tensors, or numpy arrays (a device without torch): the same bits.
    """
    for entry in history:
        replay_(params, seed_pool(run_seed, entry.round, entry.pool_size), entry.aggregate, lr)


def _pool_seed(pool: Sequence[int], index: int) -> int:
    if not 0 <= index < len(pool):
        raise ZoError(f"seed index {index} is outside the pool of {len(pool)} seeds")
    return pool[index]


def replay_records_(
    params: Params,
    pool: Sequence[int],
    records: Sequence[ZoRecord],
    lr: float,
    eps: float,
    perturbations: int = 1,
) -> None:
    """Apply one client's records in its local order, exactly as :func:`spsa_multi_step_` did.

    One direction a step: three passes per record (``+eps z``, ``-2 eps z``,
    ``+(eps - lr g) z``). ``n = perturbations`` directions a step: per step, ``+eps z_j``,
    ``-2 eps z_j``, ``+eps z_j`` for each of its ``n`` records, then
    ``-update_coefficient(lr, g_j, n) z_j`` for each. From the round's starting tensors this gives
    the client's tensors bit for bit, provided ``g`` is the value the client applied (float32 on
    the wire, or int8 at the round's fixed ``grad_scale``).
    """
    eps32 = check_eps(eps)
    if perturbations == 1:
        for record in records:
            seed = _pool_seed(pool, record.seed_index)
            _perturb(params, seed, eps32)
            _perturb(params, seed, -2 * eps32)
            _perturb(params, seed, restore_and_step(eps32, lr, record.grad))
        return
    if len(records) % perturbations:
        raise ZoError(f"{len(records)} records are not steps of {perturbations} directions")
    for start in range(0, len(records), perturbations):
        step = records[start : start + perturbations]
        seeds = [_pool_seed(pool, record.seed_index) for record in step]
        for seed in seeds:
            _perturb(params, seed, eps32)
            _perturb(params, seed, -2 * eps32)
            _perturb(params, seed, eps32)
        for seed, record in zip(seeds, step, strict=True):
            _perturb(params, seed, -update_coefficient(lr, record.grad, perturbations))


def aggregate_records(
    replies: Sequence[Sequence[ZoRecord]], weights: Sequence[float], perturbations: int = 1
) -> dict[int, float]:
    r"""Sum the clients' ``g`` per seed index, weighting client ``k`` by ``p_k``.

    .. math:: a_s = \frac{1}{n} \sum_k p_k \sum_{t : s_{k,t} = s} g_{k,t}, \qquad
        p_k = n_k / \sum_j n_j

    with ``n = perturbations`` directions a step (a client steps ``lr / n`` along each).

    Weights are per client (example counts, as FedKSeed weights by data size), not per step: a
    client's update is ``-lr sum_t g_t z_t``, so replaying ``a`` gives FedAvg of the client updates
    ``sum_k p_k Delta_k`` (up to float rounding). Sums run in float64 in reply then step order and
    are rounded to float32; entries that come to exactly 0 are dropped (replaying them is a no-op).

    Returns
    -------
    dict[int, float]
        ``{seed index: a_s}``, sorted by seed index.
    """
    if len(replies) != len(weights):
        raise ZoError(f"{len(replies)} replies but {len(weights)} weights")
    totals: dict[int, float] = {}
    for k, (p_k, records) in enumerate(zip(normalized_weights(weights), replies, strict=True)):
        for t, record in enumerate(records):
            if not math.isfinite(record.grad) or record.seed_index < 0:
                raise ZoError(f"reply {k}, record {t}: invalid {record}")
            share = p_k * record.grad if perturbations == 1 else p_k * record.grad / perturbations
            totals[record.seed_index] = totals.get(record.seed_index, 0.0) + share
    rounded = {s: float(np.float32(totals[s])) for s in sorted(totals)}
    return {s: a for s, a in rounded.items() if a != 0.0}


def replay_(params: Params, pool: Sequence[int], aggregate: Mapping[int, float], lr: float) -> None:
    """Apply one round's aggregate: ``w -= lr a_s z_s`` for each seed index ``s`` in sorted order.

    The global model is the base replayed with every round's aggregate; each pass adds
    ``-float32(float32(lr) * float32(a_s))`` times ``z``, so every party gets the same bits.
    """
    for index in sorted(aggregate):
        seed = _pool_seed(pool, index)
        with np.errstate(over="ignore"):
            step = float(np.float32(lr) * np.float32(aggregate[index]))
        _perturb(params, seed, -float32_scale(step))


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
    applied (fp32, or int8 at the run's fixed scale), as :func:`fedft.zo.step.spsa_step`
    and :func:`replay_records_` pin every float operation.
    """
    out = {name: tensor.detach().clone() for name, tensor in start.items()}
    pool = seed_pool(run_seed, server_round, zo.pool_size)
    replay_records_(in_zo_order(out), pool, records, zo.lr, zo.eps, zo.perturbations)
    return out


def history_bytes(num_entries: int, pool_size: int) -> int:
    """Bytes of an aggregate history: per entry one seed index and one float32 ``a_s``."""
    return num_entries * (index_width(pool_size) + 4)


def trainable_bytes(numel: int, bytes_per_weight: int = 4) -> int:
    """Bytes of a checkpoint of the trainable tensors."""
    return numel * bytes_per_weight


def prefer_replay(
    num_entries: int,
    pool_size: int,
    trainable_numel: int,
    *,
    bytes_per_weight: int = 4,
    max_replay_passes: int | None = None,
) -> bool:
    """Decide a client's catch-up: replay the history (True) or fetch a checkpoint (False).

    Replay when the history is smaller than the checkpoint and, if ``max_replay_passes`` is given,
    costs at most that many passes over the weights (one per entry; the device's compute budget).
    """
    smaller = history_bytes(num_entries, pool_size) < trainable_bytes(
        trainable_numel, bytes_per_weight
    )
    return smaller and (max_replay_passes is None or num_entries <= max_replay_passes)
