r"""Zeroth-order fine-tuning with shared seeds: SPSA steps, seed pools, aggregation and replay.

MeZO (Malladi et al., 2023, "Fine-Tuning Language Models with Just Forward Passes", arXiv
2305.17333) estimates the directional derivative along a random ``z`` with two forward passes (SPSA,
Spall, 1992) and updates in place, at inference memory:

.. math::

    g = \frac{L(w + \epsilon z) - L(w - \epsilon z)}{2 \epsilon}, \qquad
    w \leftarrow w - \eta\, g\, z

FedKSeed (Qin et al., ICML 2024, "Federated Full-Parameter Tuning of Billion-Sized Language Models
with Communication Cost under 18 Kilobytes", arXiv 2312.06353) draws ``z`` from a pool of ``K``
seeds shared by the server, so a client's update is its list of records ``(seed index, g)``; the
server sums ``g`` per seed and every party rebuilds the model by replaying that history. "Just One
Byte (per gradient)" (Zelikman et al., 2023, arXiv 2308.10865) sends each ``g`` in one byte.

Every float operation here is pinned (float32, fixed order, :func:`fedft.rng.perturb_`), so a
replay gives the same bits as the training it mirrors, on any machine. Two consequences:

- ``w + e z - 2e z + e z != w`` in floating point, so :func:`replay_records_` repeats all three
  perturbation passes of each step (the last one fused with the update), not only the update.
- A rebuild (mixed rounds: the server recomputes a zo client's factors) needs the very ``g`` the
  client applied: either float32 on the wire (4 bytes a step), or int8 with a scale fixed before
  the round (``grad_scale``, e.g. ``clip / 127``) that the client applies to its own update
  (1 byte a step). The scale ``max|g| / 127`` is only known after the round: fine for the
  aggregate of a pure zo round, where the client's own weights are discarded, not for a rebuild.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedft.algorithms.fedavg import normalized_weights
from fedft.errors import FedftError
from fedft.rng import float32_scale, perturb_

INT8_LEVELS = 127  # codes in [-127, 127]: symmetric, -128 unused
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
MAX_POOL_SIZE = 2**32
_MASK64 = 2**64 - 1
_GAMMA64 = 0x9E3779B97F4A7C15  # splitmix64 increment (Steele, Lea and Flood, 2014)
_SEED_DOMAIN = 1  # separates pool seeds from per-step seed choices
_STEP_DOMAIN = 2


class ZoError(FedftError, ValueError):
    """A seed pool, record, gradient, weight or scale of the zeroth-order path is invalid."""


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


def quantize_grads(grads: Sequence[float], scale: float | None = None) -> tuple[np.ndarray, float]:
    """Quantize a reply's ``g`` values to int8 codes with one float32 scale (symmetric).

    ``scale = float32(max|g| / 127)`` unless given (then rounded to float32);
    ``code = clip(rint(g / scale), -127, 127)`` in float64, ties to even.
    All-zero ``g`` (or ``max|g| < 127 * 1.2e-38``) gives ``scale = 0`` and zero codes. A given scale
    clips larger ``|g|``: this is how a client quantizes each step before applying it.

    Returns
    -------
    tuple[np.ndarray, float]
        int8 codes and the float32 scale; ``|g - dequantize| <= scale / 2`` for unclipped ``g``.

    Raises
    ------
    ZoError
        If a ``g`` is not finite (names its index) or a given scale is not a normal float32.
    """
    values = np.asarray(grads, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ZoError(f"grad {int(bad[0])} is {values[bad[0]]}: cannot quantize")
    if scale is None:
        scale = float(np.float32(np.max(np.abs(values), initial=0.0) / INT8_LEVELS))
        if scale < FLOAT32_TINY:
            return np.zeros(values.size, dtype=np.int8), 0.0
    else:
        with np.errstate(over="ignore"):
            scale = float(np.float32(scale))
        if not (math.isfinite(scale) and scale >= FLOAT32_TINY):
            raise ZoError(f"`grad_scale` must be a finite float32 >= 1.2e-38, got {scale!r}")
    codes = np.clip(np.rint(values / scale), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return codes, scale


def dequantize_grads(codes: np.ndarray, scale: float) -> list[float]:
    """Return ``float32(code * scale)`` for each code (exact inverse up to rounding)."""
    return (np.asarray(codes, dtype=np.float32) * np.float32(scale)).tolist()


def restore_and_step(eps32: float, lr: float, grad: float) -> float:
    """``float32(eps - float32(lr) * float32(g))``: undo ``-eps z`` and take the step, one pass."""
    with np.errstate(over="ignore"):
        return float32_scale(float(np.float32(eps32) - np.float32(lr) * np.float32(grad)))


def check_eps(eps: float) -> float:
    """Return ``eps`` rounded to float32, raising :class:`ZoError` unless it is > 0."""
    eps32 = float32_scale(eps)
    if not eps32 > 0:
        raise ZoError(f"`eps` must be > 0, got {eps!r}")
    return eps32


def spsa_step_(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[[], float],
    seed: int,
    eps: float,
    lr: float,
    *,
    grad_scale: float | None = None,
) -> float:
    r"""Take one SPSA step in place (MeZO), at inference memory; return the ``g`` it applied.

    Passes over ``w`` (each :func:`fedft.rng.perturb_`, float32 coefficients):
    ``w += eps z``; ``L+``; ``w -= 2 eps z``; ``L-``; ``g = float32((L+ - L-) / (2 eps))``;
    ``w += (eps - lr g) z`` (restore and step fused). :func:`replay_records_` repeats these passes
    bit for bit. With ``grad_scale``, ``g`` is quantized to int8 at that scale *before* it is
    applied, so one byte per step rebuilds the client exactly.

    Parameters
    ----------
    params : Sequence[torch.Tensor]
        The trainable tensors, in layout order.
    loss_fn : Callable[[], float]
        Evaluates the loss at the current ``params`` (a float or a 0-d tensor).
    seed : int
        The step's seed (``pool[seed_index]``).
    eps, lr : float
        Perturbation size and learning rate.
    grad_scale : float, optional
        Fixed int8 scale (e.g. ``clip / 127``); ``g`` is clipped to ``127 * grad_scale``.

    Returns
    -------
    float
        The applied projected gradient ``g`` (a float32 value).
    """
    eps32 = check_eps(eps)
    with torch.no_grad():
        perturb_(params, seed, eps32)
        loss_plus = float(loss_fn())
        perturb_(params, seed, -2 * eps32)
        loss_minus = float(loss_fn())
        with np.errstate(over="ignore"):
            grad = float(np.float32((loss_plus - loss_minus) / (2 * eps32)))
        if not math.isfinite(grad):
            perturb_(params, seed, eps32)  # back to w (up to rounding) before reporting
            raise ZoError(f"seed {seed}: L+ = {loss_plus}, L- = {loss_minus} give g = {grad}")
        if grad_scale is not None:
            codes, _ = quantize_grads([grad], grad_scale)
            grad = dequantize_grads(codes, grad_scale)[0]
        perturb_(params, seed, restore_and_step(eps32, lr, grad))
    return grad


def _pool_seed(pool: Sequence[int], index: int) -> int:
    if not 0 <= index < len(pool):
        raise ZoError(f"seed index {index} is outside the pool of {len(pool)} seeds")
    return pool[index]


def replay_records_(
    params: Sequence[torch.Tensor],
    pool: Sequence[int],
    records: Sequence[ZoRecord],
    lr: float,
    eps: float,
) -> None:
    """Apply one client's records in its local order, exactly as :func:`spsa_step_` did.

    Three passes per record (``+eps z``, ``-2 eps z``, ``+(eps - lr g) z``): from the round's
    starting tensors this gives the client's tensors bit for bit, provided ``g`` is the value the
    client applied (float32 on the wire, or int8 with the client's fixed ``grad_scale``).
    """
    eps32 = check_eps(eps)
    for record in records:
        seed = _pool_seed(pool, record.seed_index)
        perturb_(params, seed, eps32)
        perturb_(params, seed, -2 * eps32)
        perturb_(params, seed, restore_and_step(eps32, lr, record.grad))


def aggregate_records(
    replies: Sequence[Sequence[ZoRecord]], weights: Sequence[float]
) -> dict[int, float]:
    r"""Sum the clients' ``g`` per seed index, weighting client ``k`` by ``p_k``.

    .. math:: a_s = \sum_k p_k \sum_{t : s_{k,t} = s} g_{k,t}, \qquad p_k = n_k / \sum_j n_j

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
            totals[record.seed_index] = totals.get(record.seed_index, 0.0) + p_k * record.grad
    rounded = {s: float(np.float32(totals[s])) for s in sorted(totals)}
    return {s: a for s, a in rounded.items() if a != 0.0}


def replay_(
    params: Sequence[torch.Tensor], pool: Sequence[int], aggregate: Mapping[int, float], lr: float
) -> None:
    """Apply one round's aggregate: ``w -= lr a_s z_s`` for each seed index ``s`` in sorted order.

    The global model is the base replayed with every round's aggregate; each pass adds
    ``-float32(float32(lr) * float32(a_s))`` times ``z``, so every party gets the same bits.
    """
    for index in sorted(aggregate):
        seed = _pool_seed(pool, index)
        with np.errstate(over="ignore"):
            step = float(np.float32(lr) * np.float32(aggregate[index]))
        perturb_(params, seed, -float32_scale(step))


def index_width(pool_size: int) -> int:
    """Bytes of one seed index on the wire: 1, 2 or 4 for pools up to 2**8, 2**16, 2**32."""
    _check_pool_size(pool_size)
    return 1 if pool_size <= 2**8 else 2 if pool_size <= 2**16 else 4


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
