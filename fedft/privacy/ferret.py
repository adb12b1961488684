r"""Ferret coordinates under differential privacy: clip before projecting, bound what is released.

A Ferret client (:mod:`fedft.ferret`) releases, per block ``b``, coordinates
``gamma_{b,j} = <Delta_b, v_{b,s_j}>`` that the server scales by ``c_b`` (``1 / n_b`` or
``1 / (n_b + d_b - 1)``) and sums per slot ``b K + s``. With ``[privacy]``:

1. the device clips its update ``Delta = X - X_k`` (A and B together) to ``C`` in L2 *before*
   projecting (:func:`fedft.privacy.mechanisms.clip_update`);
2. every block takes ``n_b = K`` coordinates (:func:`private_counts`): Ferret's data-dependent
   ``n_b = floor(K ||Delta_b|| / max ||Delta||)`` would itself leak the update's block norms;
   with ``n_b = K`` each block's window is the whole pool, in an order that depends only on the
   public (run seed, round, client, block);
3. the released vector, the client's scaled coordinates ``x_{b,s} = c_b gamma_{b,j}`` over every
   slot, is clipped to ``C`` in L2 (:func:`clip_scaled`). That is the bound the accountant uses,
   since a projection can lengthen a vector (``||x|| <= max_b c_b ||V_b||_2 ||Delta||``, with
   ``||V_b||_2`` up to ``sqrt(K d_b)``); for the unbiased scaling ``E||x||^2 = ||Delta||^2 / K``,
   so with step 1 this clip rarely binds;
4. the noise ``N(0, sigma^2 C^2)`` goes on the scaled slots: in central mode by the server, on
   the sum over the sampled clients of every slot of every block (all of them are in some
   client's window), then divided by ``m`` (:func:`fedft.privacy.zo.noisy_seed_means`); in
   local mode by the device on its own ``x`` (:func:`private_coordinates`), before encoding.

The server never trusts the device: in central mode it clips every decoded reply's slot vector to
``C`` again (the coordinate codes' rounding can lengthen it). One round is one Gaussian mechanism
of multiplier ``sigma`` per client (``sigma / 2`` in local mode), as a first-order round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedft.ferret.aggregate import FerretCoordinates, scale_of


def private_counts(num_blocks: int, pool_size: int) -> list[int]:
    """``n_b = K`` for every block: coordinate counts that reveal nothing about the update."""
    return [pool_size] * num_blocks


def _norm(values: Sequence[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in values))


def clip_scaled(
    coords: FerretCoordinates, sizes: Sequence[int], scaling: str, clip_norm: float
) -> tuple[FerretCoordinates, float]:
    """The coordinates with ``||(c_b gamma_b)_b||_2 <= C``, and that norm before clipping.

    Float32 coordinates; the scale is shrunk until the float32 result's norm is within ``C``.
    """
    scales = [scale_of(scaling, n, d) for n, d in zip(coords.counts, sizes, strict=True)]
    scaled = [c * np.asarray(g, np.float64) for c, g in zip(scales, coords.coords, strict=True)]
    norm = _norm(scaled)
    if norm <= clip_norm:
        return coords, norm
    factor = clip_norm / norm
    while True:
        out = tuple(np.asarray(g * factor, np.float32) for g in coords.coords)
        if _norm([c * o.astype(np.float64) for c, o in zip(scales, out, strict=True)]) <= clip_norm:
            return FerretCoordinates(coords.counts, out), norm
        factor *= 1 - 1e-6


def private_coordinates(
    coords: FerretCoordinates,
    sizes: Sequence[int],
    scaling: str,
    clip_norm: float,
    noise_std: float,
    rng: np.random.Generator | None,
) -> FerretCoordinates:
    """The device's release: scaled coordinates clipped to ``C``, plus ``N(0, noise_std^2)`` each.

    ``noise_std`` is ``sigma C`` in local mode, 0 in central mode (the server adds the noise).
    The noise is drawn on the scaled coordinate and divided by ``c_b``, so that the server's
    ``c_b gamma'`` is ``x + N(0, noise_std^2)``.
    """
    clipped, _ = clip_scaled(coords, sizes, scaling, clip_norm)
    if noise_std == 0:
        return clipped
    if rng is None:
        raise ValueError("noise_std > 0 needs a generator")
    out = []
    for n, d, g in zip(clipped.counts, sizes, clipped.coords, strict=True):
        c = scale_of(scaling, n, d)
        noise = rng.normal(0.0, noise_std, size=len(g)) / c
        out.append(np.asarray(np.asarray(g, np.float64) + noise, np.float32))
    return FerretCoordinates(clipped.counts, tuple(out))


def clip_slots(slots: Mapping[int, float], clip_norm: float) -> tuple[dict[int, float], float]:
    """A client's scaled slots ``{b K + s: x}`` clipped to ``C`` in L2 (server side); its norm."""
    norm = math.sqrt(sum(v * v for v in slots.values()))
    if norm <= clip_norm:
        return dict(slots), norm
    factor = clip_norm / norm
    while True:
        out = {s: v * factor for s, v in slots.items()}
        if math.sqrt(sum(v * v for v in out.values())) <= clip_norm:
            return out, norm
        factor *= 1 - 1e-12


def slot_sums(clients: Sequence[Mapping[int, float]]) -> dict[int, float]:
    """``sum_k x_{k,slot}`` per slot (float64, unweighted, reply order)."""
    totals: dict[int, float] = {}
    for slots in clients:
        for s, v in slots.items():
            totals[s] = totals.get(s, 0.0) + v
    return totals


def slot_support(num_blocks: int, pool_size: int) -> range:
    """Every slot ``b K + s``: where central noise goes (each is in some client's window)."""
    return range(num_blocks * pool_size)
