"""Seed pools and the per-step seed indices every party derives (FedKSeed, arXiv 2312.06353).

The server announces a pool of ``K`` seeds per round as a pure function of (run seed, round, K);
a client derives the seed index of each local step from (pool, round, client index, step), so no
index travels on the wire. A step's record is ``(seed index, g)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedft.errors import ZoError

MAX_POOL_SIZE = 2**32
_MASK64 = 2**64 - 1
_GAMMA64 = 0x9E3779B97F4A7C15  # splitmix64 increment (Steele, Lea and Flood, 2014)
_SEED_DOMAIN = 1  # separates pool seeds from per-step seed choices
_STEP_DOMAIN = 2

__all__ = [
    "MAX_POOL_SIZE",
    "ZoError",
    "ZoRecord",
    "derived_seed_indices",
    "index_width",
    "seed_pool",
    "seed_pool_id",
    "unit_draw",
]


@dataclass(frozen=True)
class ZoRecord:
    """One local step: the pool index of its seed and its projected gradient ``g`` (float32)."""

    seed_index: int
    grad: float


def _fmix64(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _absorb(state: int, value: int, name: str) -> int:
    """``fmix64((state ^ value) + gamma mod 2**64)``: fold one uint64 input into a hash state."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MASK64:
        raise ZoError(f"`{name}` must be an integer in [0, 2**64), got {value!r}")
    return _fmix64(((state ^ value) + _GAMMA64) & _MASK64)


def _check_pool_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_POOL_SIZE:
        raise ZoError(f"`pool_size` must be an integer in [1, 2**32], got {size!r}")


def seed_pool_id(run_seed: int, round: int, size: int) -> int:
    """Return the 63-bit id of a seed pool: ``fmix64`` chain over (run_seed, round, size) >> 1."""
    _check_pool_size(size)
    state = _absorb(_absorb(0, run_seed, "run_seed"), round, "round")
    return _absorb(state, size, "size") >> 1


def seed_pool(run_seed: int, round: int, size: int) -> list[int]:
    """Return the ``size`` seeds of a pool, a pure function so that server and clients agree.

    ``seed_k = absorb(absorb(seed_pool_id(...), 1), k) >> 1`` (63-bit), with
    ``absorb(s, v) = fmix64((s ^ v) + 0x9E3779B97F4A7C15 mod 2**64)`` (splitmix64's finalizer).

    Parameters
    ----------
    run_seed : int
        The run's seed, in ``[0, 2**64)``.
    round : int
        Server round the pool belongs to; use 0 for one pool for the whole run.
    size : int
        Number of seeds ``K`` (FedKSeed uses a few thousand).

    Returns
    -------
    list[int]
        ``K`` seeds in ``[0, 2**63)``.
    """
    base = _absorb(seed_pool_id(run_seed, round, size), _SEED_DOMAIN, "domain")
    return [_absorb(base, k, "k") >> 1 for k in range(size)]


def derived_seed_indices(
    pool_id: int, round: int, client: int, num_steps: int, pool_size: int
) -> list[int]:
    """Return the seed index of each local step when a client derives them instead of sending them.

    ``index_t = absorb(absorb(absorb(absorb(pool_id, 2), round), c), t) mod K``, ``c`` the client's
    index in the scenario (its partition id, stable across runs, so a simulation with a fixed seed
    repeats exactly): uniform draws with replacement, as FedKSeed samples, and free on the wire
    (bias ``<= K / 2**64``).
    """
    _check_pool_size(pool_size)
    state = _absorb(_absorb(pool_id, _STEP_DOMAIN, "pool_id"), round, "round")
    state = _absorb(state, client, "client")
    return [_absorb(state, t, "step") % pool_size for t in range(num_steps)]


def unit_draw(seed: int, domain: int, value: int) -> float:
    """``(absorb(absorb(seed, domain), value) >> 11) / 2**53``: a draw in ``[0, 1)``, exact."""
    return (_absorb(_absorb(seed, domain, "seed"), value, "value") >> 11) / 2.0**53


def index_width(pool_size: int) -> int:
    """Bytes of one seed index on the wire: 1, 2 or 4 for pools up to 2**8, 2**16, 2**32."""
    _check_pool_size(pool_size)
    return 1 if pool_size <= 2**8 else 2 if pool_size <= 2**16 else 4
