"""Utility against epsilon: fedit and zo with [privacy] off and at target epsilon 8, 3, 1.

Run from the repository root (not a test; prints a markdown table of measured figures):

    PYTHONPATH=$PWD .venv/bin/python benchmarks/privacy.py --out /tmp/privacy-bench
    PYTHONPATH=$PWD .venv/bin/python benchmarks/privacy.py --strategies zo --epsilons 8

Every run is ``fedft simulate`` of ``--scenario`` (default: simulations/default.toml, the tiny
model, 5 clients, 3 rounds, seed 0), paired: the same seed gives the same split, initial adapter
and batches. Private runs use ``privacy.mode = "central"``, ``target_delta = 1e-5`` and
``target_epsilon`` (which picks the noise multiplier for the planned rounds); the clip norm is
the median of the non-private run's round-1 update norms for fedit (``update_norm``, the server's
``||X_k - X||``), and ``--zo-clip`` for zo's per-step ``|g|`` (zo replies report no update norm).
Choosing the clip from a non-private run is itself a data-dependent choice that the epsilon does
not cover (the usual caveat of DP tuning). Columns: final global eval loss and its change
against the non-private run, the epsilon spent, the noise multiplier, uplink bytes per client
and round. ``--clients 5,50,200`` sweeps the clients per round (``federation.num_clients``, iid
partition, every client every round), each count with its own non-private run: with client-level
DP the noise on the mean is ``sigma C / m`` per coordinate, so utility at a fixed epsilon is a
function of ``m``. ``--light`` keeps each client's compute small enough for 50-1,000 clients a
round on 2 cores (the settings of ``benchmarks/scale_rounds.py``: 4 local steps for fedit and zo,
a zo pool of 64 seeds, 3,000 examples so that every client holds some); it applies to every run
of the sweep, the non-private ones included, so the pairs stay paired. "drop kept" is the share
of the non-private run's eval-loss drop (initial minus final) that the private run keeps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIGHT = [
    "train.local_steps=4",
    "zo.local_steps=4",
    "zo.pool_size=64",
    "data.num_examples=3000",
]


def simulate(scenario: str, out: Path, overrides: list[str]) -> list[dict]:
    """Run one simulation (or reuse a finished one in ``out``); its metrics.jsonl rows."""
    if not (out / "metrics.jsonl").is_file() or not (out / "adapter").exists():
        args = [sys.executable, "-m", "fedft.cli", "simulate", scenario, "--out", str(out)]
        for o in overrides:
            args += ["--set", o]
        proc = subprocess.run(args, capture_output=True, text=True)
        (out.parent / f"{out.name}.log").write_text(proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"{out.name}: fedft simulate failed\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def summary(rows: list[dict]) -> dict:
    rounds = [r for r in rows if r["kind"] == "round"]
    clients = [r for r in rows if r["kind"] == "client"]
    return {
        "eval_loss": rounds[-1]["eval_loss"],
        "initial_loss": rounds[0]["eval_loss"],
        "epsilon": rounds[-1].get("privacy.epsilon"),
        "sigma": rounds[-1].get("privacy.noise_multiplier"),
        "bytes_up": statistics.mean(c["bytes_up"] for c in clients),
        "norms": [c["update_norm"] for c in clients if c["round"] == 1 and "update_norm" in c],
        "clients": sum(1 for c in clients if c["round"] == 1),
        "wall_s": sum(r.get("wall_s", 0.0) for r in rounds),
    }


def kept(run: dict, off: dict) -> str:
    """The share of the non-private run's eval-loss drop that a private run keeps."""
    drop = off["initial_loss"] - off["eval_loss"]
    if drop <= 0:
        return "-"
    return f"{(run['initial_loss'] - run['eval_loss']) / drop:+.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(ROOT / "simulations/default.toml"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/fedft-privacy-bench"))
    parser.add_argument("--strategies", default="fedit,zo")
    parser.add_argument("--epsilons", default="8,3,1")
    parser.add_argument("--zo-clip", type=float, default=8.0)
    parser.add_argument(
        "--clients",
        default="",
        help="clients per round to sweep, e.g. 5,50,200 (iid partition, every client every round)",
    )
    parser.add_argument("--set", action="append", default=[], help="extra scenario overrides")
    parser.add_argument(
        "--light",
        action="store_true",
        help="small per-client compute for many clients a round: " + " ".join(LIGHT),
    )
    args = parser.parse_args()
    extra = (LIGHT if args.light else []) + args.set
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| strategy | clients / round | target epsilon | clip | noise multiplier | epsilon spent "
        "| final eval loss | vs off | drop kept | bytes up / client-round | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    sweep = [int(m) for m in args.clients.split(",") if m] or [0]
    for strategy, m in ((s, m) for m in sweep for s in args.strategies.split(",")):
        base = [f"federation.strategy='{strategy}'", *extra]
        tag = strategy
        if m:
            base += [f"federation.num_clients={m}", "partition.method='iid'"]
            tag = f"{strategy}-m{m}"
        off = summary(simulate(args.scenario, args.out / f"{tag}-off", base))
        clip = statistics.median(off["norms"]) if strategy != "zo" else args.zo_clip
        lines.append(
            f"| {strategy} | {off['clients']} | off | - | - | - | {off['eval_loss']:.3f} (from "
            f"{off['initial_loss']:.3f}) | - | - | {off['bytes_up']:.0f} | {off['wall_s']:.0f} |"
        )
        print(lines[-1], flush=True)
        for eps in args.epsilons.split(","):
            private = base + [
                "privacy.mode='central'",
                f"privacy.clip_norm={clip:.6g}",
                f"privacy.target_epsilon={eps}",
                "privacy.target_delta=1e-5",
            ]
            run = summary(simulate(args.scenario, args.out / f"{tag}-eps{eps}", private))
            change = run["eval_loss"] / off["eval_loss"] - 1
            lines.append(
                f"| {strategy} | {run['clients']} | {eps} | {clip:.3g} | {run['sigma']:.3g} "
                f"| {run['epsilon']:.3f} "
                f"| {run['eval_loss']:.3f} | {change:+.1%} | {kept(run, off)} "
                f"| {run['bytes_up']:.0f} | {run['wall_s']:.0f} |"
            )
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
