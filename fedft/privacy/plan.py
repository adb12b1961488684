"""What each round of a scenario releases, and the noise multiplier the scenario resolves to.

One client's release per round (:class:`fedft.privacy.accountant.Release`):

==================  ==========================  ======================================
path                central                     local
==================  ==========================  ======================================
first-order         ``N(sigma)``, once          ``N(sigma / 2)``, once
zo                  ``N(sigma)``, ``S_r`` times ``N(sigma / 2)``, ``T`` times
==================  ==========================  ======================================

Central mode protects adding or removing one client (sensitivity ``C`` of the sum). Local mode
releases each client's own noised contribution, whose sensitivity is ``2C`` (any clipped update
may replace it), hence ``sigma / 2``; the server sees who took part, so there is no sampling
amplification. ``S_r`` is :func:`fedft.privacy.zo.step_compositions` of round ``r`` (``T``, the
local steps, when no client steps twice on one seed).
"""

from __future__ import annotations

from fedft.config import Scenario
from fedft.privacy.accountant import Release, calibrate_noise
from fedft.privacy.zo import client_indices, step_compositions


def round_compositions(scenario: Scenario, server_round: int) -> int:
    """How many Gaussian mechanisms one client's contribution to ``server_round`` counts for."""
    if not scenario.federation.spec.shared_seeds:
        return 1
    zo = scenario.zo
    if scenario.privacy.mode == "local":
        return zo.local_steps
    indices = client_indices(
        scenario.run.seed,
        server_round,
        scenario.federation.num_clients,
        zo.local_steps,
        zo.pool_size,
    )
    return step_compositions(indices)


def round_release(
    scenario: Scenario, server_round: int, noise_multiplier: float, count: int | None = None
) -> Release:
    """The :class:`Release` of ``server_round`` at ``noise_multiplier`` (``count``: if known)."""
    privacy, fed = scenario.privacy, scenario.federation
    local = privacy.mode == "local"
    rate = fed.fraction_train if privacy.amplification and not local else 1.0
    if count is None:
        count = round_compositions(scenario, server_round)
    return Release(noise_multiplier / 2 if local else noise_multiplier, count, rate)


def noise_multiplier(scenario: Scenario) -> float:
    """``privacy.noise_multiplier``, or the one ``privacy.target_epsilon`` picks for every round."""
    privacy = scenario.privacy
    if privacy.noise_multiplier > 0:
        return privacy.noise_multiplier
    counts = {
        r: round_compositions(scenario, r) for r in range(1, scenario.federation.num_rounds + 1)
    }

    def releases(sigma: float) -> list[Release]:
        return [round_release(scenario, r, sigma, n) for r, n in counts.items()]

    return calibrate_noise(releases, privacy.target_epsilon, privacy.target_delta)


def settings_line(scenario: Scenario, sigma: float | None = None) -> str:
    """One line: the privacy settings a run starts with (``sigma``: the resolved multiplier)."""
    s = scenario.privacy
    if not s.enabled:
        return "privacy: off"
    sigma = noise_multiplier(scenario) if sigma is None else sigma
    picked = " (picked by target_epsilon)" if s.noise_multiplier == 0 else ""
    budget = f"target epsilon {s.target_epsilon:g}" if s.target_epsilon else "no epsilon budget"
    amplified = ", sampling amplification" if s.amplification else ""
    return (
        f"privacy: {s.mode} DP, clip {s.clip_norm:g}, noise multiplier {sigma:.4g}{picked}, "
        f"delta {s.target_delta:g}, {budget}{amplified}"
    )
