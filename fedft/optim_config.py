"""The ``[server_opt]`` and ``[fedprox]`` tables: server optimisers and the client proximal term.

Both act on the LoRA factors, tensor by tensor, whatever the strategy's aggregate is:

- ``[server_opt]``: the server treats ``x_t - aggregate`` as a pseudo-gradient (``x_t`` the
  round's global factors) and steps with Flower's own maths (``flwr.serverapp.strategy``):
  FedAvgM (Hsu et al., 2019, arXiv 1909.06335), FedAdam and FedYogi (Reddi et al., ICLR 2021,
  arXiv 2003.00295); see :mod:`server.server_opt`.
- ``[fedprox]``: each client adds ``mu / 2 ||w - w_t||^2`` over its trainable factors to its
  local loss (FedProx, Li et al., MLSys 2020, arXiv 1812.06127).

The defaults (``optimizer = "none"``, ``mu = 0``) train exactly as without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fedft.schema import check

SERVER_OPTIMIZERS = ("none", "fedavgm", "fedadam", "fedyogi")


@dataclass(frozen=True)
class ServerOptSection:
    """A server optimiser on the aggregate (Flower's FedAvgM, FedAdam, FedYogi).

    Parameters
    ----------
    optimizer : str
        ``none`` (the aggregate is the new state), ``fedavgm``, ``fedadam`` or ``fedyogi``.
    lr : float
        FedAvgM's ``server_learning_rate`` or FedAdam / FedYogi's ``eta``.
    momentum : float
        FedAvgM's ``server_momentum`` or FedAdam / FedYogi's ``beta_1``.
    beta_2 : float
        FedAdam / FedYogi's second-moment decay.
    tau : float
        FedAdam / FedYogi's adaptivity ``tau`` (added to ``sqrt(v)``).
    """

    optimizer: Literal["none", "fedavgm", "fedadam", "fedyogi"] = "none"
    lr: float = 1.0
    momentum: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        check(
            self.optimizer in SERVER_OPTIMIZERS,
            "server_opt.optimizer",
            f"one of {SERVER_OPTIMIZERS}",
        )
        check(
            math.isfinite(self.lr) and self.lr > 0, "server_opt.lr", "must be a finite number > 0"
        )
        check(0 <= self.momentum < 1, "server_opt.momentum", "must be in [0, 1)")
        check(0 <= self.beta_2 < 1, "server_opt.beta_2", "must be in [0, 1)")
        check(
            math.isfinite(self.tau) and self.tau > 0,
            "server_opt.tau",
            "must be a finite number > 0",
        )


@dataclass(frozen=True)
class FedProxSection:
    """FedProx's proximal term: ``mu / 2 ||w - w_t||^2`` on each client's trainable factors."""

    mu: float = 0.0

    def __post_init__(self) -> None:
        check(math.isfinite(self.mu) and self.mu >= 0, "fedprox.mu", "must be a finite number >= 0")
