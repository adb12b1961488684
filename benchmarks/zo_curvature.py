r"""Measure what sets zo's learning rate for a model: rms g, its size and E[z^T H z].

Purpose: zo's useful ``zo.lr`` spans orders of magnitude between models. One SPSA step moves the
         trainable tensors by ``||lr g z|| = lr |g| sqrt(numel)`` (Rademacher ``z``); the rule
         fedft's guidance follows (docs/zo.md) keeps that near 0.7, the largest value measured
         to learn steadily on the tiny model: ``lr = 0.7 / (rms(g) sqrt(numel))``. The second
         order bound ``lr < 2 / E[z^T H z]`` (from ``L+ + L- - 2 L0 = eps^2 z^T H z``) is
         printed too, but at round 0 (LoRA B = 0) it overestimates the stable lr: on the tiny
         model it says 0.026 where 3e-3 already diverges.
Command: PYTHONPATH=$PWD python benchmarks/zo_curvature.py simulations/default.toml
         [--set zo.sparse_fraction=0.001 --set federation.strategy='zo': a sparse mask's deltas]
         SmolLM2 (one run at a time): flock /work/smollm2.lock nice -n -5 python
         benchmarks/zo_curvature.py simulations/smollm2_chatterbot.toml --probes 8
Numbers: ``--probes`` seeds on partition 0's first batches (3 forward passes each); ``eps`` is the
         scenario's ``zo.eps`` unless ``--eps``; the trainable tensors are the run's round-0 ones.
Output: trainable size, rms g, the suggested lr by the step rule, and z^T H z with its bound.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.runtimes.torch_lora import client_datasets, client_model  # noqa: E402
from fedft.config import load_scenario  # noqa: E402
from fedft.wire.order import zo_order  # noqa: E402
from fedft.zo.mask_build import build_mask  # noqa: E402
from fedft.zo.rng import perturb_  # noqa: E402
from fedft.zo.seeds import seed_pool  # noqa: E402
from fedft.zo.sparse import install_  # noqa: E402
from fedft.zo.trainable import initial_state, set_trainable_, trainable_params  # noqa: E402

# lr x rms(g) x sqrt(numel) = ||lr g z||, the distance one step moves the trainable tensors:
# on the tiny model (numel 17696, rms g 5.1 at eps 1e-3) lr 1e-3 (0.68) learns steadily and lr
# 3e-3 (2.0) diverges by round 2 (docs/zo.md).
STEP_DISPLACEMENT = 0.7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--eps", type=float, default=None)
    parser.add_argument("--set", action="append", default=[], help="a scenario override")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario, args.set)
    torch.set_num_threads(scenario.simulation.threads_per_client)
    eps = args.eps or scenario.zo.eps
    model, tokenizer = client_model(scenario, 0)
    train_set, _ = client_datasets(scenario, 0)
    if scenario.zo.sparse:  # the server's mask (zo.sparse_fraction): perturb its deltas
        install_(model, build_mask(scenario, model, tokenizer))
    model.eval()
    modules = scenario.zo.trainable_modules
    start = initial_state(model, modules)
    set_trainable_(model, start, modules)
    params = trainable_params(model, zo_order(start), modules)
    numel = sum(p.numel() for p in params)
    batches = train_set.batches(scenario.train.batch_size, seed=0, steps=args.probes)
    grads, curvatures = [], []
    with torch.no_grad():
        for seed, batch in zip(seed_pool(scenario.run.seed, 0, args.probes), batches, strict=True):
            loss_0 = float(model(**batch).loss)
            perturb_(params, seed, eps)
            loss_plus = float(model(**batch).loss)
            perturb_(params, seed, -2 * eps)
            loss_minus = float(model(**batch).loss)
            perturb_(params, seed, eps)
            grads.append((loss_plus - loss_minus) / (2 * eps))
            curvatures.append((loss_plus + loss_minus - 2 * loss_0) / eps**2)
    g2, kappa = float(np.mean(np.square(grads))), float(np.mean(curvatures))
    print(f"scenario {args.scenario.name}: {numel} trainable values, eps {eps:g}")
    print(
        f"rms g {np.sqrt(g2):.4g} "
        f"(|g| from {min(map(abs, grads)):.3g} to {max(map(abs, grads)):.3g})"
    )
    print(
        f"z^T H z: mean {kappa:.4g}, median {np.median(curvatures):.4g}, "
        f"from {min(curvatures):.3g} to {max(curvatures):.3g}"
    )
    lr = STEP_DISPLACEMENT / (np.sqrt(g2) * np.sqrt(numel))
    print(f"step displacement rule: suggested lr = {lr:.3g}")
    if kappa > 0:
        print(
            f"lr bound 2 / E[z^T H z] = {2 / kappa:.3g}; "
            f"suggested lr 1 / E[z^T H z] = {1 / kappa:.3g}"
        )
        print(
            "expected loss drop a step at that lr: E[g^2] / (2 E[z^T H z]) = "
            f"{g2 / (2 * kappa):.3g}"
        )


if __name__ == "__main__":
    main()
