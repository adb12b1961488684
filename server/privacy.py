"""The server's side of ``[privacy]``: enforce the clip, add the central noise, keep the accountant.

The maths is in :mod:`fedft.privacy`; a strategy calls :meth:`ServerPrivacy.bound` on the replies
it keeps (every reply, whatever the client did, is clipped to ``C`` in central mode and weighs
the same), then :meth:`ServerPrivacy.mean_factors`, :meth:`ServerPrivacy.zo_means` or
:meth:`ServerPrivacy.ferret_means` instead of
its weighted average, and :meth:`ServerPrivacy.spend` once the round's aggregate is accepted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedft.config import Scenario
from fedft.privacy import mechanisms
from fedft.privacy.accountant import PrivacyAccountant, Release
from fedft.privacy.config import PrivacySection
from fedft.privacy.ferret import clip_slots, slot_sums, slot_support
from fedft.privacy.plan import noise_multiplier, round_release, settings_line
from fedft.privacy.zo import (
    client_indices,
    clip_records,
    noise_support,
    noisy_seed_means,
    seed_sums,
)
from server.replies import ClientUpdate

log = logging.getLogger("fedft.server")


class ServerPrivacy:
    """Clipping enforced on replies, central noise, and the run's accountant.

    Parameters
    ----------
    scenario : Scenario
        A scenario with ``privacy.mode`` ``central`` or ``local``.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.settings: PrivacySection = scenario.privacy
        self.sigma = noise_multiplier(scenario)
        budget = self.settings.target_epsilon or math.inf
        self.accountant = PrivacyAccountant(self.settings.target_delta, budget)
        self.torch_rng = mechanisms.secret_generator()
        self.rng = np.random.default_rng(
            int(torch.randint(0, 2**62, (1,), generator=self.torch_rng))
        )

    @property
    def central(self) -> bool:
        """Whether the server adds the noise (``mode = "central"``)."""
        return self.settings.mode == "central"

    @property
    def noise_std(self) -> float:
        """``sigma C``: the noise standard deviation on a sum."""
        return self.sigma * self.settings.clip_norm

    def describe(self) -> str:
        """One line: the settings a run starts with."""
        return settings_line(self.scenario, self.sigma)

    def release(self, server_round: int) -> Release:
        """What ``server_round`` releases about one client."""
        return round_release(self.scenario, server_round, self.sigma)

    def exhausted(self, server_round: int) -> bool:
        """Whether running ``server_round`` would spend more than ``target_epsilon``."""
        return self.accountant.would_exceed(self.release(server_round))

    def spend(self, server_round: int) -> dict[str, float]:
        """Compose the round's release; the round's metrics (``privacy.epsilon``: spent so far)."""
        epsilon = self.accountant.spend(self.release(server_round))
        return {"privacy.epsilon": epsilon, "privacy.noise_multiplier": self.sigma}

    def bound(self, updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
        """Each update with weight 1 and, in central mode, its zo scalars clipped to ``C`` here.

        The server never trusts a client's clipping: a factor update is clipped by
        :meth:`mean_factors`. In local mode the replies are noised already: clipping them again
        would only shrink the noise.
        """
        out = []
        for u in updates:
            u = dataclasses.replace(u, num_examples=1.0)
            if self.central and u.records:
                u = dataclasses.replace(u, records=clip_records(u.records, self.settings.clip_norm))
            out.append(u)
        return out

    def mean_factors(
        self,
        server_round: int,
        updates: Sequence[ClientUpdate],
        start: Mapping[str, torch.Tensor],
        sampled: int,
    ) -> dict[str, torch.Tensor]:
        """The new factors: ``X + (sum_k clip_C(Delta_k) + N(0, (sigma C)^2 I)) / m``.

        In local mode ``X + sum_k Delta_k / m`` (the replies are noised already).

        ``m`` is the round's sampled clients (a reply that failed counts as a zero update).
        """
        clip = self.settings.clip_norm
        deltas = []
        for u in updates:
            delta = mechanisms.update_of(u.factors, start)
            if self.central:
                delta, norm = mechanisms.clip_update(delta, clip)
                if norm > clip * (1 + 1e-4):
                    log.warning(
                        "round %d: node %d's update norm %.4g exceeds privacy.clip_norm %g: "
                        "clipped by the server",
                        server_round,
                        u.node_id,
                        norm,
                        clip,
                    )
            deltas.append(delta)
        template = mechanisms.update_of(start, start)
        std = self.noise_std if self.central else 0.0
        mean = mechanisms.noisy_mean_update(deltas, template, max(sampled, 1), std, self.torch_rng)
        return mechanisms.apply_update(start, mean)

    def zo_means(
        self, server_round: int, updates: Sequence[ClientUpdate], sampled: int
    ) -> dict[int, float]:
        """Per seed ``a_s = (sum_k sum_t g_kt [s_kt = s] + N(0, (sigma C)^2)) / m``.

        Central noise goes on every seed a client of the scenario could have stepped on.
        """
        zo = self.scenario.zo
        support: set[int] = set()
        if self.central:
            fed = self.scenario.federation
            indices = client_indices(
                self.scenario.run.seed, server_round, fed.num_clients, zo.local_steps, zo.pool_size
            )
            support = noise_support(indices)
        std = self.noise_std if self.central else 0.0
        sums = seed_sums([u.records for u in updates])
        return noisy_seed_means(sums, support, max(sampled, 1), std, self.rng)

    def ferret_means(
        self,
        server_round: int,
        slots: Sequence[tuple[int, Mapping[int, float]]],
        num_blocks: int,
        sampled: int,
    ) -> dict[int, float]:
        """Per slot ``a = (sum_k clip_C(x_k) + N(0, (sigma C)^2)) / m`` (Ferret coordinates).

        ``slots``: (node, scaled slots) per kept reply. Central: each reply's slot vector is
        clipped to ``C`` here, and the noise goes on every slot of every block. Local: the mean.
        """
        clip = self.settings.clip_norm
        vectors = []
        for node, x in slots:
            if self.central:
                x, norm = clip_slots(x, clip)
                if norm > clip * (1 + 1e-4):
                    log.warning(
                        "round %d: node %d's Ferret coordinates' norm %.4g exceeds "
                        "privacy.clip_norm %g: clipped by the server",
                        server_round,
                        node,
                        norm,
                        clip,
                    )
            vectors.append(x)
        support = slot_support(num_blocks, self.scenario.ferret.pool_size) if self.central else ()
        std = self.noise_std if self.central else 0.0
        return noisy_seed_means(slot_sums(vectors), support, max(sampled, 1), std, self.rng)

    def state(self) -> list[dict[str, float]]:
        """The accountant's releases (checkpoints)."""
        return self.accountant.state()

    def load_state(self, state: Sequence[dict[str, float]]) -> None:
        """Continue the accountant of a checkpoint."""
        self.accountant.load_state(state)
