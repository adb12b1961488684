r"""What zo learns for a client compute budget: fedit, today's zo and each zo option, same seeds.

Purpose: the issue-16 question. At the same client compute per round (forward passes: a
         first-order step costs about 3, a zo step 2 x zo.perturbations), how much of fedit's
         eval-loss drop does each zo configuration reach, for how many uplink bytes?
Command: PYTHONPATH=$PWD python benchmarks/zo_budget.py simulations/default.toml --rounds 5 \
             --runs fedit,zo,zo_scale,zo_scale_p4 --out /tmp/zo_budget
         SmolLM2 (one run at a time on the machine): flock /work/smollm2.lock nice -n -5 \
             python benchmarks/zo_budget.py simulations/smollm2_chatterbot.toml --rounds 2 \
             --runs zo_scale --reuse fedit=/work/runs/cmp14_smollm2/fedit-seed0 --out /tmp/zb
         ``--budget 8`` gives zo 8 x fedit's forward passes (the curve); ``--reuse NAME=DIR``
         reads a finished run folder of the same scenario and seed instead of running it.
Numbers: the budget is the scenario's ``train.local_steps`` x 3 forward passes per client round;
         a zo run of ``n`` directions a step gets ``budget x --budget / (2 n)`` local steps.
         Paired sampling: with the same seed, every run trains the same partitions each round
         and evaluates the same examples, so the drops compare directly.
Output: a markdown table: forward passes per client round, eval loss after each round, the drop
        and its share of fedit's, uplink bytes per client round and fedit's / the run's.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedft.config import load_scenario  # noqa: E402

FIRST_ORDER_PASSES = 3  # forward, backward (~2 forwards)


def options(name: str, lr: float | None) -> tuple[list[str], int]:
    """The overrides of a named run (besides its local steps) and its directions per step."""
    if name == "fedit":
        return ["federation.strategy='fedit'"], 0
    parts = name.split("_")
    if parts[0] != "zo":
        raise SystemExit(f"unknown run {name!r} (fedit, zo, zo_scale, zo_scale_p4, zo_sp0.01, ...)")
    overrides, perturbations = ["federation.strategy='zo'"], 1
    for part in parts[1:]:
        if part == "scale":
            overrides.append("zo.grad_scale_rule='adaptive'")
        elif part == "fp32":
            overrides.append("zo.grad_encoding='fp32'")
        elif part.startswith("p") and part[1:].isdigit():
            perturbations = int(part[1:])
            overrides.append(f"zo.perturbations={perturbations}")
        elif part.startswith("sp"):  # a sensitive sparse mask of this fraction (zo.sparse_*)
            overrides.append(f"zo.sparse_fraction={float(part[2:])}")
        elif part == "rand":  # ... drawn at random instead
            overrides.append("zo.sparse_mask='random'")
        elif part == "sr":
            overrides.append("zo.grad_rounding='stochastic'")
        elif part.startswith("lr"):
            overrides.append(f"zo.lr={float(part[2:])}")
        else:
            raise SystemExit(f"run {name!r}: unknown option {part!r}")
    if lr is not None and not any(o.startswith("zo.lr=") for o in overrides):
        overrides.append(f"zo.lr={lr}")
    return overrides, perturbations


def rows(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The round rows and the client rows of a run folder's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    data = [json.loads(line) for line in lines]
    return [r for r in data if r["kind"] == "round"], [r for r in data if r["kind"] == "client"]


def simulate(scenario: Path, overrides: list[str], out: Path) -> Path:
    """Run ``fedft simulate`` with the overrides into ``out`` (kept if it finished before)."""
    if (out / "metrics.jsonl").is_file() and (out / "checkpoint.safetensors").is_file():
        return out
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(scenario), "--out", str(out)]
    for override in overrides:
        args += ["--set", override]
    print(f"running {out.name}: {' '.join(overrides)}", file=sys.stderr, flush=True)
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{out.name}: fedft simulate failed\n{proc.stderr[-3000:]}")
    return out


def summary(name: str, run_dir: Path, rounds: int, passes: int) -> dict:
    """Eval loss per round (up to ``rounds``) and mean uplink bytes per client round."""
    round_rows, client_rows = rows(run_dir)
    losses = {r["round"]: r["eval_loss"] for r in round_rows if r["round"] <= rounds}
    ups = [c["bytes_up"] for c in client_rows if c["round"] <= rounds]
    return {
        "name": name,
        "passes": passes,
        "losses": [losses.get(r, math.nan) for r in range(rounds + 1)],
        "bytes_up": sum(ups) / max(len(ups), 1),
    }


def table(results: list[dict], rounds: int) -> str:
    """Markdown: each run's losses, drop, share of fedit's drop and uplink bytes."""
    fedit = next((r for r in results if r["name"] == "fedit"), None)
    head = ["run", "fwd passes / client round", *[f"loss r{k}" for k in range(rounds + 1)]]
    head += ["drop", "% of fedit's drop", "uplink B / client round", "fedit's / run's uplink"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        drop = r["losses"][0] - r["losses"][-1]
        share, ratio = "", ""
        if fedit is not None:
            fedit_drop = fedit["losses"][0] - fedit["losses"][-1]
            share = f"{100 * drop / fedit_drop:.1f}" if fedit_drop else ""
            ratio = f"{fedit['bytes_up'] / r['bytes_up']:.0f}" if r["bytes_up"] else ""
        cells = [r["name"], str(r["passes"]), *[f"{x:.4f}" for x in r["losses"]]]
        cells += [f"{drop:.4f}", share, f"{r['bytes_up']:.0f}", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="fedit,zo,zo_scale,zo_scale_p4")
    parser.add_argument("--budget", type=float, default=1.0, help="zo compute x fedit's")
    parser.add_argument("--lr", type=float, default=None, help="zo.lr of every zo run")
    parser.add_argument("--reuse", action="append", default=[], help="NAME=RUN_DIR")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    budget = FIRST_ORDER_PASSES * scenario.train.local_steps
    reused = dict(item.split("=", 1) for item in args.reuse)
    common = [f"federation.num_rounds={args.rounds}", f"run.seed={args.seed}"]
    results = []
    for name in args.runs.split(","):
        overrides, n = options(name, args.lr)
        steps = max(1, round(budget * args.budget / (2 * n))) if n else 0
        passes = 2 * n * steps if n else budget
        if n:
            overrides.append(f"zo.local_steps={steps}")
        label = name if args.budget == 1 or not n else f"{name}@{args.budget:g}x"
        run_dir = Path(reused[name]) if name in reused else args.out / label
        if name not in reused:
            simulate(args.scenario, common + overrides, run_dir)
        results.append(summary(label, run_dir, args.rounds, passes))
    print(table(results, args.rounds))


if __name__ == "__main__":
    main()
