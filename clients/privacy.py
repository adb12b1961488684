"""The device's side of ``[privacy]``: clip its contribution, and noise it in local mode.

First-order runtimes: the factor update ``X_k - X`` (A and B together) is clipped in L2 to ``C``
(:func:`fedft.privacy.mechanisms.clip_update`) and, in local mode, gets ``N(0, (sigma C)^2 I)``
before it is encoded. Zeroth-order runtimes: every step's ``g`` goes through :func:`zo_grad`
before the int8 encoding (:mod:`fedft.privacy.zo`). The noise comes from the OS's entropy, never
from the scenario, so the server cannot subtract it. Ferret runtimes: the update is clipped before
it is projected, and the scaled coordinates are clipped (and noised in local mode) by
:func:`private_ferret_coordinates` (:mod:`fedft.privacy.ferret`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from clients.replies import FactorReply
from fedft.config import Scenario
from fedft.ferret.aggregate import FerretCoordinates
from fedft.privacy import mechanisms
from fedft.privacy.ferret import private_coordinates
from fedft.privacy.plan import noise_multiplier
from fedft.privacy.zo import clip_grad, local_grad


@functools.cache
def _sigma(scenario: Scenario) -> float:
    return noise_multiplier(scenario)  # calibrated once per process from target_epsilon


def private_factors(
    reply: FactorReply, scenario: Scenario, start: Mapping[str, torch.Tensor]
) -> FactorReply:
    """``reply`` with its update clipped to ``C`` and, in local mode, noised."""
    privacy = scenario.privacy
    delta, _ = mechanisms.clip_update(mechanisms.update_of(reply.factors, start), privacy.clip_norm)
    if privacy.mode == "local":
        noise = mechanisms.gaussian_noise(
            delta, _sigma(scenario) * privacy.clip_norm, mechanisms.secret_generator()
        )
        mechanisms.add_(delta, noise)
    return dataclasses.replace(reply, factors=mechanisms.apply_update(start, delta))


def _secret_numpy_rng() -> np.random.Generator:
    return np.random.default_rng(
        int(torch.randint(0, 2**62, (1,), generator=mechanisms.secret_generator()))
    )


def private_ferret_coordinates(
    coords: FerretCoordinates, sizes: Sequence[int], scenario: Scenario
) -> FerretCoordinates:
    """A Ferret reply's scaled coordinates clipped to ``C`` and, in local mode, noised."""
    privacy = scenario.privacy
    local = privacy.mode == "local"
    std = _sigma(scenario) * privacy.clip_norm if local else 0.0
    rng = _secret_numpy_rng() if local else None
    return private_coordinates(coords, sizes, scenario.ferret.scaling, privacy.clip_norm, std, rng)


def zo_grad(scenario: Scenario, grad_scale: float | None) -> Callable[[float], float] | None:
    """What a zo step applies to ``g`` before encoding it (None with privacy off)."""
    privacy = scenario.privacy
    if not privacy.enabled:
        return None
    clip = privacy.clip_norm
    if privacy.mode == "central":
        return functools.partial(clip_grad, clip_norm=clip, grad_scale=grad_scale)
    rng = _secret_numpy_rng()
    std = _sigma(scenario) * clip
    return lambda g: local_grad(g, clip, std, grad_scale, rng)
