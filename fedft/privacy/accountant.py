r"""The RDP accountant of a run: Google's ``dp-accounting``, the library Flower's ``flwr[dp]`` uses.

A round releases, for every participating client, ``count`` Gaussian mechanisms of noise
multiplier ``sigma`` (standard deviation over the L2 sensitivity), possibly on a Poisson sample
of the clients with rate ``q``: the ``dp_event``

.. math:: \mathrm{PoissonSampled}(q,\ \mathrm{SelfComposed}(\mathcal{N}(\sigma), \mathit{count}))

(``q = 1``: no sampling event). Rounds compose; epsilon at ``delta`` is the RDP bound converted
as in Mironov, "Renyi Differential Privacy", 2017 (``dp_accounting.rdp.RdpAccountant``, add or
remove one client). The accountant keeps the list of releases, so its state is a JSON list and a
resumed run rebuilds the same RDP curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from dp_accounting import dp_event, mechanism_calibration
from dp_accounting.rdp import RdpAccountant


@dataclass(frozen=True)
class Release:
    """What one round releases about one client.

    Attributes
    ----------
    noise_multiplier : float
        Noise standard deviation over the L2 sensitivity of one client's contribution (> 0).
    count : int
        Gaussian mechanisms composed in the round (zo: the client's steps, see
        :func:`fedft.privacy.zo.step_compositions`; 1 for a factor update).
    sampling_rate : float
        Probability that a client takes part in the round (Poisson sampling; 1: every round).
    """

    noise_multiplier: float
    count: int = 1
    sampling_rate: float = 1.0


def release_event(release: Release) -> dp_event.DpEvent:
    """The ``dp_event`` of one round's :class:`Release`."""
    event: dp_event.DpEvent = dp_event.GaussianDpEvent(release.noise_multiplier)
    if release.count != 1:
        event = dp_event.SelfComposedDpEvent(event, release.count)
    if release.sampling_rate < 1:
        event = dp_event.PoissonSampledDpEvent(release.sampling_rate, event)
    return event


def epsilon_of(releases: Sequence[Release], delta: float) -> float:
    """Epsilon at ``delta`` after all of ``releases`` (0.0 for none)."""
    if not releases:
        return 0.0
    accountant = RdpAccountant()
    for release, count in _grouped(releases):
        accountant.compose(release_event(release), count)
    return float(accountant.get_epsilon(delta))


def _grouped(releases: Sequence[Release]) -> list[tuple[Release, int]]:
    """Runs of equal releases as (release, how many): one composition each."""
    groups: list[tuple[Release, int]] = []
    for release in releases:
        if groups and groups[-1][0] == release:
            groups[-1] = (release, groups[-1][1] + 1)
        else:
            groups.append((release, 1))
    return groups


def calibrate_noise(
    releases_for: Callable[[float], Sequence[Release]], target_epsilon: float, delta: float
) -> float:
    """The smallest noise multiplier ``s`` with ``epsilon_of(releases_for(s), delta) <= target``.

    ``releases_for(s)`` lists every planned round's release at multiplier ``s``;
    ``dp_accounting.mechanism_calibration.calibrate_dp_mechanism`` searches (Brent's method), and
    the result is checked again, so the plan never exceeds the target.
    """

    def event(sigma: float) -> dp_event.DpEvent:
        return dp_event.ComposedDpEvent([release_event(r) for r in releases_for(sigma)])

    sigma = float(
        mechanism_calibration.calibrate_dp_mechanism(
            RdpAccountant,
            event,
            target_epsilon,
            delta,
            mechanism_calibration.LowerEndpointAndGuess(1e-3, 1.0),
            tol=1e-4,
        )
    )
    while epsilon_of(releases_for(sigma), delta) > target_epsilon:  # tolerance of the search
        sigma *= 1 + 1e-4
    return sigma


class PrivacyAccountant:
    """The releases of a run so far, and the epsilon they spent at ``delta``.

    Parameters
    ----------
    delta : float
        The ``delta`` epsilon is reported at.
    budget : float
        The epsilon a run may spend (``math.inf``: no budget).
    """

    def __init__(self, delta: float, budget: float = math.inf) -> None:
        self.delta = delta
        self.budget = budget
        self.releases: list[Release] = []

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far."""
        return epsilon_of(self.releases, self.delta)

    def epsilon_after(self, release: Release) -> float:
        """Epsilon once ``release`` is composed too (the accountant is unchanged)."""
        return epsilon_of([*self.releases, release], self.delta)

    def would_exceed(self, release: Release) -> bool:
        """Whether composing ``release`` would spend more than the budget."""
        return self.epsilon_after(release) > self.budget

    def spend(self, release: Release) -> float:
        """Compose ``release``; return the epsilon spent so far."""
        self.releases.append(release)
        return self.epsilon

    def state(self) -> list[dict[str, float]]:
        """The releases, JSON-able (checkpoints)."""
        return [asdict(r) for r in self.releases]

    def load_state(self, state: Sequence[dict[str, float]]) -> None:
        """Restore what :meth:`state` returned."""
        self.releases = [
            Release(float(r["noise_multiplier"]), int(r["count"]), float(r["sampling_rate"]))
            for r in state
        ]
