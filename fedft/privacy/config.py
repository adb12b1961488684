"""The ``[privacy]`` table: client-level differential privacy, off by default."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fedft.schema import check


@dataclass(frozen=True)
class PrivacySection:
    """Client-level differential privacy (``docs/privacy.md``).

    Each client's contribution is clipped to ``clip_norm`` on the device (first-order: the L2 norm
    of its factor update ``X_k - X``, A and B together; zo: ``|g|`` of every step) and Gaussian
    noise of standard deviation ``noise_multiplier * clip_norm`` is added: by the server to the
    sum of the clipped contributions (``mode = "central"``, DP-FedAvg, McMahan et al., arXiv
    1710.06963), or by each client to its own (``mode = "local"``). The RDP accountant reports the
    epsilon spent at ``target_delta`` after every round.

    Parameters
    ----------
    mode : {"off", "central", "local"}
        Where the noise is added; ``off`` (the default) changes nothing.
    clip_norm : float
        ``C > 0``: the bound of one client's contribution (per step for zo).
    noise_multiplier : float
        ``sigma >= 0``: the noise's standard deviation over ``C``. ``0`` with ``target_epsilon``
        set: the smallest ``sigma`` whose epsilon after every planned round is ``target_epsilon``.
    target_delta : float
        The ``delta`` epsilon is reported at, in ``(0, 1)``.
    target_epsilon : float
        The budget (``0``: none). A run stops, checkpoint kept, before a round would exceed it.
    amplification : bool
        Count client sampling (``fraction_train < 1``) as Poisson subsampling with rate
        ``fraction_train``. Valid only if the sampled set is secret from the adversary: fedft's
        paired sampler is a public function of ``run.seed``, so the default is ``false``.
    """

    mode: Literal["off", "central", "local"] = "off"
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    target_delta: float = 1e-5
    target_epsilon: float = 0.0
    amplification: bool = False

    def __post_init__(self) -> None:
        if self.mode == "off":
            return
        check(
            math.isfinite(self.clip_norm) and self.clip_norm > 0,
            "privacy.clip_norm",
            f"must be a finite number > 0, got {self.clip_norm}",
        )
        check(
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0,
            "privacy.noise_multiplier",
            f"must be a finite number >= 0, got {self.noise_multiplier}",
        )
        check(
            0 < self.target_delta < 1,
            "privacy.target_delta",
            f"must be in (0, 1), got {self.target_delta}",
        )
        check(
            math.isfinite(self.target_epsilon) and self.target_epsilon >= 0,
            "privacy.target_epsilon",
            f"must be a finite number >= 0 (0: no budget), got {self.target_epsilon}",
        )
        check(
            self.noise_multiplier > 0 or self.target_epsilon > 0,
            "privacy.noise_multiplier",
            "must be > 0 unless privacy.target_epsilon is set (which then picks it)",
        )

    @property
    def enabled(self) -> bool:
        """Whether clipping, noise and accounting are on."""
        return self.mode != "off"
