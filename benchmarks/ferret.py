"""Ferret: eval loss against uplink bytes (fedit vs ferret vs zo), and what projecting costs.

Run from the repository root (not a test; prints measured figures side by side):

    .venv/bin/python benchmarks/ferret.py                      # both parts, default scenario
    .venv/bin/python benchmarks/ferret.py --timing-only        # part 2 only (a minute)
    .venv/bin/python benchmarks/ferret.py --smollm2            # part 2 on SmolLM2 shapes too
    .venv/bin/python benchmarks/ferret.py --scenario simulations/smollm2_chatterbot.toml \
        --rounds 2 --set train.local_steps=2                   # part 1 on the real model

1. Quality per byte: ``fedft compare`` of fedit, ferret and zo on one scenario, same seeds (same
   split, same initial adapter, same sampled clients), ``--rounds`` rounds. Prints each strategy's
   eval-loss drop (round 0 -> last) as a fraction of fedit's, and its cumulative uplink bytes as a
   fraction of fedit's; ``comparison.png`` in ``--out`` has eval loss per round and against
   cumulative bytes up in one figure.
2. Cost: one client's projection (``client_coordinates``) and the server's work for a round (one
   rebuild per reply to check it, plus applying the aggregate) against one local first-order step,
   on the tiny model's LoRA layout (and SmolLM2-135M's, rank 8 on q_proj/v_proj: 120 tensors,
   460,800 weights). The update changes every weight by the same amount (1e-3), so a block's
   norm grows with its size and the largest blocks get all ``K`` seeds; minimum over repeats
   (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedft.config import load_scenario
from fedft.ferret.aggregate import (
    FerretRound,
    aggregate_coordinates,
    apply_round_,
    client_coordinates,
    client_slots,
)
from fedft.ferret.blocks import blocks_of
from fedft.zo.seeds import seed_pool_id

ROOT = Path(__file__).resolve().parents[1]
FERRET = ["ferret.pool_size=32", "ferret.server_lr=0.5"]  # tuned on the default scenario


def quality(scenario: Path, rounds: int, seeds: list[int], extra: list[str], out: Path) -> None:
    """Part 1: run the comparison, print drop and byte fractions against fedit."""
    from fedft.compare import compare

    overrides = [f"federation.num_rounds={rounds}", *FERRET, *extra]
    print(compare(scenario, ["fedit", "ferret", "zo"], seeds, overrides, out))
    print(
        f"\n{'strategy':>8} {'seed':>4} {'loss 0 -> last':>16} {'drop / fedit':>12} "
        f"{'bytes up':>10} {'/ fedit':>8}"
    )
    for seed in seeds:
        base = None
        for strategy in ("fedit", "ferret", "zo"):
            rows = [
                json.loads(x) for x in (out / f"{strategy}-seed{seed}" / "metrics.jsonl").open()
            ]
            losses = [r["eval_loss"] for r in rows if r["kind"] == "round"]
            up = sum(r.get("bytes_up", 0) for r in rows if r["kind"] == "client")
            drop = losses[0] - losses[-1]
            base = base or (drop, up)
            print(
                f"{strategy:>8} {seed:>4} {losses[0]:7.3f} -> {losses[-1]:6.3f} "
                f"{drop / base[0]:11.1%} {up:10d} {up / base[1]:8.3%}"
            )


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def projection_costs(layout: list[tuple[str, tuple[int, ...]]], pool_size: int, clients: int):
    """Seconds for one client's projection and the server's round (rebuilds + aggregate)."""
    blocks = blocks_of(layout)
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(shape).astype(np.float32) for _, shape in layout]
    # every weight moves by 1e-3: n_b grows with sqrt(d_b), the largest blocks get all K seeds
    end = [s - 1e-3 * np.sign(rng.standard_normal(s.shape)).astype(np.float32) for s in start]
    start_t = [torch.from_numpy(s) for s in start]
    end_t = [torch.from_numpy(e) for e in end]

    def project_one(client: int = 0):
        return client_coordinates(
            start_t, end_t, blocks, run_seed=0, round=1, client=client, pool_size=pool_size
        )

    project_s = best_of(project_one, 2)
    replies = [project_one(k) for k in range(clients)]
    pool_id = seed_pool_id(0, 1, pool_size)
    slots = [
        client_slots(
            r, blocks, pool_id=pool_id, round=1, client=k, pool_size=pool_size, scaling="unbiased"
        )
        for k, r in enumerate(replies)
    ]

    def server_round():
        for k in range(clients):  # each reply's rebuild, for its checks
            apply_round_(
                [t.clone() for t in start_t],
                blocks,
                FerretRound(1, pool_size, aggregate_coordinates([slots[k]], [1.0])),
                0,
                1.0,
            )
        entry = FerretRound(1, pool_size, aggregate_coordinates(slots, [1.0] * clients))
        apply_round_([t.clone() for t in start_t], blocks, entry, 0, 1.0)

    coords = sum(replies[0].counts)
    return len(blocks), coords, project_s, best_of(server_round, 1)


def step_seconds(overrides: list[str], scenario: Path) -> float:
    """One first-order local step of the scenario's client 0 (torch), seconds (min of 3 rounds)."""
    from clients.runtimes.torch_lora import TorchLora, client_model
    from fedft.models import initial_factors

    sc = load_scenario(scenario, ["train.local_steps=2", *overrides])
    model, _ = client_model(sc, 0)
    factors = initial_factors(model)
    return min(
        TorchLora().train_round(sc, 0, factors, r, 0).metrics["train_s"] / 2 for r in (1, 2, 3)
    )


def smollm2_layout(rank: int = 8) -> list[tuple[str, tuple[int, ...]]]:
    hidden, kv = 576, 192  # SmolLM2-135M: 30 layers, 9 heads, 3 kv heads of 64
    layout = []
    for layer in range(30):
        for module, out in (("q_proj", hidden), ("v_proj", kv)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            layout += [
                (f"{prefix}.lora_A.weight", (rank, hidden)),
                (f"{prefix}.lora_B.weight", (out, rank)),
            ]
    return sorted(layout)


def timing(smollm2: bool) -> None:
    """Part 2: projection and server round against one local step, side by side."""
    torch.set_num_threads(1)
    from clients.runtimes.torch_lora import client_model
    from fedft.models import initial_factors

    default = ROOT / "simulations/default.toml"
    sc = load_scenario(default)
    factors = initial_factors(client_model(sc, 0)[0])
    cases = [
        (
            "tiny (default scenario)",
            sorted((n, tuple(t.shape)) for n, t in factors.items()),
            lambda: step_seconds([], default),
        )
    ]
    if smollm2:
        smol = ROOT / "simulations/smollm2_chatterbot.toml"
        cases.append(("SmolLM2-135M q,v r8", smollm2_layout(), lambda: step_seconds([], smol)))
    print(
        f"\n{'layout':>24} {'K':>5} {'blocks':>6} {'coords':>7} {'project s':>9} "
        f"{'server s (5)':>12} {'step s':>7} {'project/step':>12}"
    )
    for name, layout, step in cases:
        step_s = step()
        for pool_size in (32, 200):
            blocks, coords, project_s, server_s = projection_costs(layout, pool_size, 5)
            print(
                f"{name:>24} {pool_size:>5} {blocks:>6} {coords:>7} {project_s:9.3f} "
                f"{server_s:12.3f} {step_s:7.3f} {project_s / step_s:12.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=ROOT / "simulations/default.toml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/benchmark-ferret")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--smollm2", action="store_true", help="part 2 on SmolLM2 shapes too")
    args = parser.parse_args()
    if not args.timing_only:
        seeds = [int(s) for s in args.seeds.split(",")]
        quality(args.scenario, args.rounds, seeds, args.overrides, args.out)
    timing(args.smollm2)


if __name__ == "__main__":
    main()
