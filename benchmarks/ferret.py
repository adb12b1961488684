"""Ferret: eval loss against uplink bytes (fedit vs ferret vs zo), and what projecting costs.

Run from the repository root (not a test; prints measured figures side by side):

    .venv/bin/python benchmarks/ferret.py --plot docs/images/ferret_default.png   # both parts
    .venv/bin/python benchmarks/ferret.py --timing-only            # part 2 only (minutes)
    .venv/bin/python benchmarks/ferret.py --timing-only --smollm2  # part 2 on SmolLM2 too
    flock /work/smollm2.lock .venv/bin/python benchmarks/ferret.py --quality-only \
        --scenario simulations/smollm2_chatterbot.toml --rounds 3 \
        --reuse runs/compare/fedit-seed0 --reuse runs/compare/zo-seed0  # reuse a compare's runs

1. Quality per byte: fedit, ferret and zo on one scenario, same seeds (same split, same initial
   adapter, same sampled clients and batches: paired sampling), ``--rounds`` rounds, the run's
   ``[ferret]`` settings (defaults, or ``--set``). Prints each strategy's eval-loss drop (round 0
   -> last) as a fraction of fedit's, and its cumulative uplink bytes (client rows' ``bytes_up``)
   as a fraction of fedit's. ``--reuse DIR`` reads a run named ``<strategy>-seed<N>`` (a ``fedft
   compare`` folder's) instead of running it, once its scenario is checked to be the same.
   ``--plot`` draws eval loss per round and against cumulative bytes up in one figure.
2. Cost: one client's projection (``client_coordinates``) and the server's work for a round (one
   rebuild per reply to check it, plus applying the aggregate) against one local first-order step,
   on the tiny model's LoRA factors and all its linear weights (full-parameter), and with
   ``--smollm2`` SmolLM2-135M's q_proj / v_proj as LoRA rank 8 (460,800 weights) and as full
   weights (13.3 M). The update changes every weight by the same amount (1e-3), so a block's norm
   grows with its size and the largest blocks get all ``K`` seeds (the most expensive case);
   minimum over repeats (the machine is shared). ``train s`` is a round's local training (the
   scenario's local steps x one step: 20 for the tiny model, 4 for SmolLM2), the time a round
   spends anyway, against which ``(project + server) / train`` puts Ferret's extra work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedft.config import Scenario, load_scenario
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
STRATEGIES = ("fedit", "ferret", "zo")
PAIRED = ("model", "lora", "data", "partition", "train")  # what a reused run must share


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]


def reusable(run_dir: Path, wanted: Scenario) -> None:
    """Raise SystemExit unless ``run_dir`` ran ``wanted``'s scenario, seed and strategy settings.

    The run's own strategy may differ from ``wanted``'s (a ``fedft compare`` folder's fedit run
    serves any comparison of the scenario); its strategy's section (``[ferret]``, ``[zo]``,
    ``[lora_fair]``), if it has one, must equal ``wanted``'s.
    """
    got = load_scenario(run_dir / "config.toml")
    mine, theirs = wanted.to_dict(), got.to_dict()
    same = all(mine[k] == theirs[k] for k in PAIRED) and got.run.seed == wanted.run.seed
    fed = {k: v for k, v in theirs["federation"].items() if k != "strategy"}
    same = same and fed == {k: v for k, v in mine["federation"].items() if k != "strategy"}
    own = got.federation.strategy
    same = same and (own not in theirs or theirs[own] == mine.get(own))
    if not same:
        raise SystemExit(
            f"--reuse {run_dir}: not the same scenario, seed and settings as this comparison"
        )


def quality(
    scenario: Path,
    rounds: int,
    seeds: list[int],
    extra: list[str],
    out: Path,
    reuse: list[Path],
    plot: Path | None,
) -> None:
    """Part 1: fedit, ferret and zo on the same seeds; drop and byte fractions against fedit.

    A run named ``<strategy>-seed<N>`` in ``reuse`` (e.g. a ``fedft compare`` folder's) is read
    instead of run again, once checked to be the same scenario and seed (paired sampling: the
    same clients and batches). One figure: eval loss per round and against cumulative bytes up.
    """
    from fedft.compare import run_one
    from fedft.plots import plot_comparison

    given = {run.name: run for run in reuse}
    curves: dict[str, list[list[dict]]] = {s: [] for s in STRATEGIES}
    table: list[str] = []
    print(
        f"\n{'strategy':>8} {'seed':>4} {'loss 0 -> last':>16} {'drop / fedit':>12} "
        f"{'bytes up':>10} {'/ fedit':>8}  run"
    )
    for seed in seeds:
        base = None
        for strategy in STRATEGIES:
            name = f"{strategy}-seed{seed}"
            overrides = [f"federation.num_rounds={rounds}", *extra]
            overrides += [f"federation.strategy='{strategy}'", f"run.seed={seed}"]
            if name in given:
                reusable(given[name], load_scenario(scenario, overrides))
                run_dir = given[name]
            else:
                run_dir = out / name
                run_one(scenario, [*overrides, f"run.name='{name}'"], run_dir, name)
            rows = _rows(run_dir)
            curves[strategy].append([r for r in rows if r["kind"] == "round"])
            if [r["round"] for r in curves[strategy][-1]] != list(range(rounds + 1)):
                raise SystemExit(f"{run_dir}: rounds 0-{rounds} not all in its metrics.jsonl")
            losses = [r["eval_loss"] for r in curves[strategy][-1]]
            up = sum(r.get("bytes_up", 0) for r in rows if r["kind"] == "client")
            drop = losses[0] - losses[-1]
            base = base or (drop, up)
            table.append(table_row(strategy, seed, curves[strategy][-1], base))
            print(
                f"{strategy:>8} {seed:>4} {losses[0]:7.3f} -> {losses[-1]:6.3f} "
                f"{drop / base[0]:11.1%} {up:10d} {up / base[1]:8.3%}  {run_dir}"
            )
    print("\n" + "\n".join([TABLE_HEAD, *table]))
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        seeds_text = ", ".join(map(str, seeds))
        title = f"{scenario.stem}: fedit vs ferret vs zo, {rounds} rounds, seeds {seeds_text}"
        plot_comparison(curves, plot, title, "fedit")
        print(f"\nplot: {plot}")


TABLE_HEAD = (
    "| strategy | seed | eval loss per round (0, 1, ...) | drop / fedit's | uplink per round (B) "
    "| uplink, cumulative (B) | / fedit's |\n| --- | --- | --- | --- | --- | --- | --- |"
)


def table_row(strategy: str, seed: int, rounds: list[dict], base: tuple[float, int]) -> str:
    """One markdown row: losses per round, drop and cumulative uplink as fractions of fedit's."""
    losses = [r["eval_loss"] for r in rounds]
    per_round = [int(r.get("bytes_up", 0)) for r in rounds[1:]]
    total = sum(per_round)
    return (
        f"| {strategy} | {seed} | {' / '.join(f'{x:.3f}' for x in losses)} "
        f"| {(losses[0] - losses[-1]) / base[0]:.1%} | {' / '.join(f'{b:,}' for b in per_round)} "
        f"| {total:,} | {total / base[1]:.3%} |"
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
    """One first-order local step of the scenario's client 0 (torch), seconds (min of 3 rounds).

    With ``ferret.trainable_modules`` in ``overrides``: a step on those modules' weights.
    """
    from clients.runtimes.torch_ferret import train_modules
    from clients.runtimes.torch_lora import TorchLora, client_model
    from fedft.zo.trainable import initial_state

    sc = load_scenario(scenario, ["train.local_steps=2", *overrides])
    model, _ = client_model(sc, 0)
    start = initial_state(model, sc.trained_modules)

    def one(r: int) -> float:
        if sc.trained_modules:
            return train_modules(sc, 0, start, r).metrics["train_s"] / 2
        return TorchLora().train_round(sc, 0, start, r, 0).metrics["train_s"] / 2

    return min(one(r) for r in (1, 2, 3))


def smollm2_layout(rank: int = 8, full: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """SmolLM2-135M's q_proj / v_proj: LoRA factors of ``rank``, or (``full``) their weights."""
    hidden, kv = 576, 192  # 30 layers, 9 heads, 3 kv heads of 64
    layout = []
    for layer in range(30):
        for module, out in (("q_proj", hidden), ("v_proj", kv)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            if full:
                layout.append((f"{prefix}.base_layer.weight", (out, hidden)))
            else:
                layout += [
                    (f"{prefix}.lora_A.weight", (rank, hidden)),
                    (f"{prefix}.lora_B.weight", (out, rank)),
                ]
    return sorted(layout)


LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
TINY_FULL = f"ferret.trainable_modules={LINEAR}"
SMOL_FULL = "ferret.trainable_modules=['q_proj','v_proj']"


def timing(smollm2: bool, pool_sizes: list[int], smollm2_steps: bool = False) -> None:
    """Part 2: projection and server round against one local step, side by side."""
    torch.set_num_threads(1)
    from clients.runtimes.torch_lora import client_model
    from fedft.zo.trainable import initial_state

    default = ROOT / "simulations/default.toml"
    ferret = ["federation.strategy='ferret'"]

    def layout_of(overrides: list[str]) -> list[tuple[str, tuple[int, ...]]]:
        sc = load_scenario(default, overrides)
        state = initial_state(client_model(sc, 0)[0], sc.trained_modules)
        return sorted((n, tuple(t.shape)) for n, t in state.items())

    tiny_steps = load_scenario(default).train.local_steps  # a round's local steps
    cases = [
        (
            "tiny LoRA (default)",
            layout_of(ferret),
            5,
            tiny_steps,
            lambda: step_seconds(ferret, default),
        ),
        (
            "tiny full, all linear",
            layout_of([*ferret, TINY_FULL]),
            5,
            tiny_steps,
            lambda: step_seconds([*ferret, TINY_FULL], default),
        ),
    ]
    if smollm2:  # the steps load the real model: run them under the SmolLM2 lock
        smol = ROOT / "simulations/smollm2_chatterbot.toml"
        smol_steps = load_scenario(smol).train.local_steps
        cases += [
            (
                "SmolLM2 q,v LoRA r8",
                smollm2_layout(),
                3,
                smol_steps,
                (lambda: step_seconds(ferret, smol)) if smollm2_steps else None,
            ),
            (
                "SmolLM2 q,v full",
                smollm2_layout(full=True),
                3,
                smol_steps,
                (lambda: step_seconds([*ferret, SMOL_FULL], smol)) if smollm2_steps else None,
            ),
        ]
    print(
        f"\n{'layout':>22} {'weights':>10} {'K':>5} {'blocks':>6} {'coords':>7} "
        f"{'project s':>9} {'server s':>8} {'clients':>7} {'step s':>7} {'project/step':>12} "
        f"{'train s':>7} {'(project+server)/train':>22}"
    )
    for name, layout, clients, local_steps, step in cases:
        step_s = step() if step is not None else float("nan")
        numel = sum(int(np.prod(shape)) for _, shape in layout)
        for pool_size in pool_sizes:
            blocks, coords, project_s, server_s = projection_costs(layout, pool_size, clients)
            print(
                f"{name:>22} {numel:>10} {pool_size:>5} {blocks:>6} {coords:>7} "
                f"{project_s:9.3f} {server_s:8.3f} {clients:>7} {step_s:7.3f} "
                f"{project_s / step_s:12.2f} {local_steps * step_s:7.2f} "
                f"{(project_s + server_s) / (local_steps * step_s):22.3f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=ROOT / "simulations/default.toml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/benchmark-ferret")
    parser.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="an existing <strategy>-seed<N> run folder of the same scenario (repeatable)",
    )
    parser.add_argument("--plot", type=Path, help="write the figure here (png)")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--smollm2", action="store_true", help="part 2 on SmolLM2 shapes too")
    parser.add_argument("--smollm2-steps", action="store_true", help="and time its steps")
    parser.add_argument("--pool-sizes", default="64,200", help="part 2's K values")
    args = parser.parse_args()
    if not args.timing_only:
        seeds = [int(s) for s in args.seeds.split(",")]
        quality(args.scenario, args.rounds, seeds, args.overrides, args.out, args.reuse, args.plot)
    if not args.quality_only:
        pool_sizes = [int(k) for k in args.pool_sizes.split(",")]
        timing(args.smollm2 or args.smollm2_steps, pool_sizes, args.smollm2_steps)


if __name__ == "__main__":
    main()
