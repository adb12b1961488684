"""Is fedit's loss at epsilon 8 the noise? One private round from the initial adapter, measured.

Run from the repository root (not a test; one process, no Flower; prints measured figures):

    PYTHONPATH=$PWD .venv/bin/python benchmarks/privacy_noise.py

The default scenario's 5 clients train round 1 (``TorchLora``, the simulation's client code); their
updates are clipped at the median norm ``C``; the mean gets the central noise ``N(0, (sigma C /
m)^2 I)`` (:mod:`fedft.privacy.mechanisms`) for ``m`` clients a round, i.e. as if the other
``m - 5`` clients' clipped updates had the same mean; the eval loss is the mean over the 5
clients' eval splits. The multipliers 1.1, 2.6, 7.0 are what ``target_epsilon`` 8, 3, 1 pick for
the scenario's 3 rounds at delta 1e-5 (``docs/privacy.md``).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from clients.runtimes.torch_lora import TorchLora, client_model, evaluate_round
from fedft.adapters import get_factors
from fedft.config import load_scenario
from fedft.privacy import mechanisms

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    scenario = load_scenario(ROOT / "simulations/default.toml")
    model, _ = client_model(scenario, 0)
    start = {k: v.detach().clone() for k, v in get_factors(model).items()}
    d = sum(t.numel() for t in start.values())
    n = scenario.federation.num_clients
    updates = [
        mechanisms.update_of(TorchLora().train_round(scenario, p, start, 1, p).factors, start)
        for p in range(n)
    ]
    norms = [mechanisms.l2_norm(u) for u in updates]
    clip = statistics.median(norms)
    clipped = [mechanisms.clip_update(u, clip)[0] for u in updates]

    def loss(factors: dict[str, torch.Tensor]) -> float:
        return statistics.mean(evaluate_round(scenario, p, factors).loss for p in range(n))

    clean = mechanisms.noisy_mean_update(clipped, updates[0], n, 0.0, None)
    print(f"d = {d}; round-1 update norms {', '.join(f'{x:.3f}' for x in norms)}; C = {clip:.4f}")
    print(f"eval loss: start {loss(start):.3f}, clipped mean without noise ", end="")
    print(f"{loss(mechanisms.apply_update(start, clean)):.3f}")
    generator = torch.Generator().manual_seed(0)
    for sigma in (1.1, 2.6, 7.0):
        for m in (5, 50, 200, 1000):
            mean = {k: t.clone() for k, t in clean.items()}
            mechanisms.add_(mean, mechanisms.gaussian_noise(mean, sigma * clip / m, generator))
            after = loss(mechanisms.apply_update(start, mean))
            ratio = sigma * math.sqrt(d) / m
            print(f"sigma {sigma} m {m}: noise norm / C {ratio:.2f}, eval loss {after:.3f}")


if __name__ == "__main__":
    main()
