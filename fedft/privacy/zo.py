r"""Differential privacy on the zeroth-order path: one scalar per step (DP-ZO, arXiv 2401.04343).

A zo client's whole contribution to a round is its records ``(s_t, g_t)``; the seed indices
``s_t`` are a public function of (run seed, round, client index) (:mod:`fedft.zo.seeds`), so only
the scalars carry data. Each is clipped, ``|g_t| <= C``:

- central mode: the server sums the clipped scalars per seed over the round's clients and adds
  ``N(0, sigma^2 C^2)`` to the sum of *every* seed any client of the scenario could have used
  (a support that depends on nothing private), then divides by the clients sampled;
- local mode: the device adds ``N(0, sigma^2 C^2)`` to each clipped ``g_t`` and rounds the result
  stochastically onto the int8 grid (``E[round(v)] = v`` inside the range), then encodes it as
  usual: one byte a step, no byte of overhead.

Accounting counts every step. Seen as one vector over seeds, client ``c``'s contribution has
L2 norm at most ``C sqrt(sum_s n_{c,s}^2)`` with ``n_{c,s}`` its steps on seed ``s``
(``= C sqrt(T)`` when its ``T`` steps use distinct seeds), so a round is that many compositions
of the Gaussian mechanism of multiplier ``sigma`` (:func:`step_compositions`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fedft.zo.seeds import ZoRecord, derived_seed_indices, seed_pool_id


def clip_grad(grad: float, clip_norm: float, grad_scale: float | None) -> float:
    """``g`` clipped to ``[-C, C]``; on the int8 grid, to the last grid point within ``C``.

    The int8 encoder rounds to the nearest multiple of ``grad_scale``, so clipping to
    ``floor(C / scale) * scale`` keeps the encoded value within ``C`` too.
    """
    bound = clip_norm
    if grad_scale is not None:
        bound = min(bound, math.floor(clip_norm / grad_scale) * grad_scale)
    bound = float32_at_most(bound)
    return float(np.float32(min(max(grad, -bound), bound)))


def float32_at_most(value: float) -> float:
    """The largest float32 ``<= value`` (``float32(C)`` can round above ``C``)."""
    v = np.float32(value)
    if float(v) > value:
        v = np.nextafter(v, np.float32(-np.inf))
    return float(v)


def stochastic_round(value: float, grad_scale: float, rng: np.random.Generator) -> float:
    """``value`` rounded to a neighbouring multiple of ``grad_scale`` (int8 range), unbiasedly.

    Rounds up with probability ``u - floor(u)``, ``u = value / scale``, so ``E[result] = value``
    for ``|value| <= 127 scale``; values beyond are first clamped to the range.
    """
    scale = float(np.float32(grad_scale))  # the encoder's scale
    u = min(max(value / scale, -127.0), 127.0)
    low = math.floor(u)
    code = low + (1 if rng.random() < u - low else 0)
    return float(np.float32(min(code, 127) * scale))


def local_grad(
    grad: float,
    clip_norm: float,
    noise_std: float,
    grad_scale: float | None,
    rng: np.random.Generator,
) -> float:
    """Local mode on the device: ``round(clip_C(g) + N(0, noise_std^2))`` (stochastic int8)."""
    noisy = max(min(grad, clip_norm), -clip_norm) + float(rng.normal(0.0, noise_std))
    if grad_scale is None:
        return float(np.float32(noisy))
    return stochastic_round(noisy, grad_scale, rng)


def clip_records(records: Iterable[ZoRecord], clip_norm: float) -> tuple[ZoRecord, ...]:
    """The records with ``|g| <= C`` enforced (the server never trusts a client's clipping)."""
    bound = float32_at_most(clip_norm)
    return tuple(
        ZoRecord(r.seed_index, float(np.float32(min(max(r.grad, -bound), bound)))) for r in records
    )


def seed_sums(replies: Sequence[Sequence[ZoRecord]]) -> dict[int, float]:
    """``sum_k sum_t g_kt [s_kt = s]`` per seed index (float64, unweighted)."""
    totals: dict[int, float] = {}
    for records in replies:
        for r in records:
            totals[r.seed_index] = totals.get(r.seed_index, 0.0) + r.grad
    return totals


def noisy_seed_means(
    sums: Mapping[int, float],
    support: Iterable[int],
    divisor: int,
    noise_std: float,
    rng: np.random.Generator | None,
) -> dict[int, float]:
    """``a_s = (sums_s + N(0, noise_std^2)) / divisor`` for every ``s`` in ``support``.

    With ``noise_std = 0`` (local mode: the scalars are noised already) the support is the seeds
    in ``sums``. Float32 values, sorted by seed, zeros dropped (as
    :func:`fedft.zo.replay.aggregate_records`).
    """
    seeds = sorted(set(support) | set(sums)) if noise_std > 0 else sorted(sums)
    out = {}
    for s in seeds:
        noise = float(rng.normal(0.0, noise_std)) if noise_std > 0 and rng is not None else 0.0
        value = float(np.float32((sums.get(s, 0.0) + noise) / divisor))
        if value != 0.0:
            out[s] = value
    return out


def client_indices(
    run_seed: int, server_round: int, num_clients: int, local_steps: int, pool_size: int
) -> list[list[int]]:
    """Every scenario client's derived seed indices in a round (public, as the clients derive)."""
    pool_id = seed_pool_id(run_seed, server_round, pool_size)
    return [
        derived_seed_indices(pool_id, server_round, c, local_steps, pool_size)
        for c in range(num_clients)
    ]


def step_compositions(indices: Iterable[Sequence[int]]) -> int:
    """``max_c sum_s n_{c,s}^2``: the Gaussian compositions one client's round counts for."""
    return max((sum(n * n for n in Counter(steps).values()) for steps in indices), default=0)


def noise_support(indices: Iterable[Sequence[int]]) -> set[int]:
    """The seeds any client could step on: central noise goes on all of them."""
    return {s for steps in indices for s in steps}
