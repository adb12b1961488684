r"""Clipping a client's factor update and the Gaussian mechanism on the sum of clipped updates.

A client's update is ``Delta_k = X_k - X`` over every LoRA factor (A and B together, one vector).
DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models", arXiv
1710.06963) clips it in L2 and noises the sum:

.. math::

    \mathrm{clip}_C(\Delta) = \Delta \min\left(1, \frac{C}{\lVert\Delta\rVert_2}\right), \qquad
    X' = X + \frac{1}{m}\left(\sum_k \mathrm{clip}_C(\Delta_k)
        + \mathcal{N}(0, \sigma^2 C^2 I)\right)

with ``m`` the clients sampled in the round: equal weights, so that adding or removing one client
moves the sum by at most ``C`` (an example-weighted mean would let one client's claimed size
scale its influence). Local mode adds the noise to each ``clip_C(Delta_k)`` on the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

Factors = Mapping[str, torch.Tensor]


def update_of(factors: Factors, start: Factors) -> dict[str, torch.Tensor]:
    """``X_k - X`` per tensor, in float32."""
    return {k: factors[k].float() - start[k].float() for k in start}


def l2_norm(update: Factors) -> float:
    """``||Delta||_2`` over every tensor (float64 sums)."""
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in update.values()))


def clip_update(update: Factors, clip_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """``clip_C(Delta)`` (the update unchanged when its norm is at most ``C``) and ``||Delta||``.

    The scale is rounded down in float32 so that the result's norm never exceeds ``C``.
    """
    norm = l2_norm(update)
    if norm <= clip_norm:
        return {k: t.clone() for k, t in update.items()}, norm
    scale = clip_norm / norm
    clipped = {k: t * scale for k, t in update.items()}
    while l2_norm(clipped) > clip_norm:  # float32 rounding: shrink by one ulp-sized step
        scale *= 1 - 1e-6
        clipped = {k: t * scale for k, t in update.items()}
    return clipped, norm


def gaussian_noise(
    like: Factors, std: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """``N(0, std^2 I)`` shaped as ``like``, drawn tensor by tensor in sorted name order."""
    return {
        k: torch.randn(like[k].shape, generator=generator, dtype=torch.float64).float() * std
        for k in sorted(like)
    }


def add_(total: dict[str, torch.Tensor], other: Factors) -> None:
    """``total += other`` per tensor."""
    for k, t in other.items():
        total[k] = total[k] + t


def noisy_mean_update(
    clipped: Sequence[Factors],
    template: Factors,
    divisor: int,
    noise_std: float,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """``(sum_k Delta_k + N(0, noise_std^2 I)) / divisor`` (no noise when ``noise_std`` is 0).

    Parameters
    ----------
    clipped : Sequence[Mapping[str, torch.Tensor]]
        The clients' updates (already clipped, or already noised in local mode).
    template : Mapping[str, torch.Tensor]
        Names and shapes (an update of zeros for a round without replies).
    divisor : int
        ``m``: the clients sampled in the round (``>= 1``).
    noise_std : float
        ``sigma C`` in central mode, 0 in local mode.
    generator : torch.Generator, optional
        The noise's source (required when ``noise_std > 0``).
    """
    total = {k: torch.zeros_like(t, dtype=torch.float32) for k, t in template.items()}
    for update in clipped:
        add_(total, update)
    if noise_std > 0:
        if generator is None:
            raise ValueError("noise_std > 0 needs a generator")
        add_(total, gaussian_noise(template, noise_std, generator))
    return {k: t / divisor for k, t in total.items()}


def apply_update(start: Factors, update: Factors) -> dict[str, torch.Tensor]:
    """``X + Delta`` in each tensor's dtype."""
    return {k: (start[k].float() + update[k]).to(start[k].dtype) for k in start}


def secret_generator() -> torch.Generator:
    """A generator seeded from the OS's entropy (``secrets``), never from the scenario.

    Noise drawn from ``run.seed`` could be recomputed and subtracted by anyone who knows the
    scenario, so neither a server nor a device reuses it.
    """
    import secrets

    return torch.Generator().manual_seed(secrets.randbits(63))
