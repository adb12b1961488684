"""The LoRA-FAIR paper's table on fedft's tiny task, and a client-drift sweep (issue 17).

Purpose: compare the field's LoRA aggregation rules (FFA-LoRA, FedIT, FLoRA, FlexLoRA, LoRA-FAIR)
         on one non-IID scenario with one rank and with two ranks, and find where LoRA-FAIR's
         correction starts to pay against FedIT as the clients drift apart (more local steps,
         smaller dirichlet alpha). Every cell is a ``fedft compare``: the same seed gives every
         strategy the same split, initial adapter, sampled clients and batches (paired runs).
Command: PYTHONPATH=$PWD python benchmarks/lora_study.py table --seeds 0,1,2 --out runs/study
         PYTHONPATH=$PWD python benchmarks/lora_study.py drift --seeds 0,1,2 --out runs/study
         PYTHONPATH=$PWD python benchmarks/lora_study.py report --out runs/study  (tables only;
         --extra smollm2=runs/smollm2_compare adds a ``fedft compare`` folder of another scenario)
Numbers: simulations/lora_fair_noniid.toml (tiny model, 5 clients, rank 16, dirichlet 0.1, 15
         local steps), 4 rounds instead of its 6 (the 2-core machine was shared). Heterogeneous
         ranks: partitions 0-2 train rank 4 (a quarter of the server's 16), 3-4 rank 16. Drift
         sweep: local steps 4 / 15 / 50 at alpha 0.1, then alpha 10 / 0.1 / 0.05 at 50 steps, and 4
         steps at alpha 10 (the least drift; the 15-step cell is ``table-one-rank``'s FedIT and
         LoRA-FAIR runs).

Output: ``<out>/<cell>/`` is a ``fedft compare`` folder per cell; ``report`` prints (and writes
``<out>/study.md``) per cell and strategy the final eval loss, mean ± std over seeds, the paired
difference against FedIT (same seed), and for LoRA-FAIR the mean over rounds of
``lora_fair.cos_before`` / ``cos_after`` (FedIT's aggregate is LoRA-FAIR's start, so
``cos_before`` is how far FedIT's ``B_bar A_bar`` is from ``sum_k p_k B_k A_k``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "simulations" / "lora_fair_noniid.toml"
COMMON = ["federation.num_rounds=4"]  # 4 of the scenario's 6 rounds: the machine is shared
SEED_TIMEOUT_S = 3600  # a hung Ray run must not stall the study
TABLE_STRATEGIES = ("ffa_lora", "fedit", "flora", "flexlora", "lora_fair")
HETERO = "client_groups=[{partitions=[0, 1, 2], lora_rank=4}]"
TABLE_CELLS = {"table-one-rank": [], "table-two-ranks": [HETERO]}
DRIFT_CELLS = {
    "drift-steps50-alpha0.05": ["train.local_steps=50", "partition.alpha=0.05"],
    "drift-steps4-alpha0.1": ["train.local_steps=4", "partition.alpha=0.1"],
    "drift-steps50-alpha0.1": ["train.local_steps=50", "partition.alpha=0.1"],
    "drift-steps50-alpha10": ["train.local_steps=50", "partition.alpha=10.0"],
    "drift-steps4-alpha10": ["train.local_steps=4", "partition.alpha=10.0"],
}


def run_cell(out: Path, strategies: tuple[str, ...], overrides: list[str], seeds: str) -> None:
    """``fedft compare`` into ``out``, one seed at a time.

    A seed whose runs all finished is skipped; a failed or hung seed is reported, the next runs.
    """
    for seed in seeds.split(","):
        if all((out / f"{s}-seed{seed}" / "adapter").is_dir() for s in strategies):
            continue
        args = [sys.executable, "-m", "fedft.cli", "compare", str(SCENARIO)]
        args += ["--strategies", ",".join(strategies), "--seeds", seed, "--out", str(out)]
        for override in [*COMMON, *overrides]:
            args += ["--set", override]
        try:
            subprocess.run(args, check=True, timeout=SEED_TIMEOUT_S)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            print(f"{out.name} seed {seed}: {err}", file=sys.stderr)


def read_rounds(run: Path) -> list[dict]:
    """The round rows of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "round"]


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"  # one seed: no spread to show
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def cell_table(cell: Path) -> str:
    """Markdown rows for one compare folder."""
    runs = cell_runs(cell)
    base = runs.get("fedit", {})
    lines = []
    for strategy, by_seed in runs.items():
        final = [rounds[-1]["eval_loss"] for rounds in by_seed.values()]
        paired = [
            by_seed[s][-1]["eval_loss"] - base[s][-1]["eval_loss"] for s in by_seed if s in base
        ]
        cos = [
            (r["lora_fair.cos_before"], r["lora_fair.cos_after"])
            for rounds in by_seed.values()
            for r in rounds
            if "lora_fair.cos_before" in r and math.isfinite(r["lora_fair.cos_before"])
        ]
        before, after = (statistics.fmean(c[i] for c in cos) if cos else 0.0 for i in (0, 1))
        cos_text = f"{before:.4f} -> {after:.4f}" if cos else ""
        diff = mean_std(paired) if strategy != "fedit" else ""
        seeds = ",".join(map(str, sorted(by_seed)))
        lines.append(f"| {strategy} | {seeds} | {mean_std(final)} | {diff} | {cos_text} |")
    return "\n".join(lines)


def paper_table(cells: dict[str, Path]) -> str:
    """The LoRA-FAIR paper's table shape: a row per cell, a column per strategy.

    A cell reads ``final eval loss mean ± std (n seeds); paired minus FedIT mean ± std``.
    """
    head = "| cell | " + " | ".join(TABLE_STRATEGIES) + " |"
    lines = [head, "| --- " * (len(TABLE_STRATEGIES) + 1) + "|"]
    for name, cell in cells.items():
        if not cell.is_dir():
            continue
        runs = cell_runs(cell)
        base = runs.get("fedit", {})
        row = []
        for strategy in TABLE_STRATEGIES:
            by_seed = runs.get(strategy, {})
            final = [rounds[-1]["eval_loss"] for rounds in by_seed.values()]
            text = f"{mean_std(final)} (n={len(final)})" if final else "-"
            paired = [
                by_seed[s][-1]["eval_loss"] - base[s][-1]["eval_loss"] for s in by_seed if s in base
            ]
            if paired and strategy != "fedit":
                text += f"; {mean_std(paired)}"
            row.append(text)
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def report(out: Path, extra: dict[str, Path] | None = None) -> str:
    """The study's tables, from every compare folder under ``out`` (and ``extra``'s)."""
    head = (
        "| strategy | seeds | final eval loss | minus FedIT (paired) "
        "| LoRA-FAIR cos before -> after |\n| --- | --- | --- | --- | --- |"
    )
    summary = {n: out / n for n in TABLE_CELLS} | (extra or {})
    parts = [f"### paper-shape\n\n{paper_table(summary)}\n", f"### drift\n\n{drift_table(out)}\n"]
    for name in [*TABLE_CELLS, *DRIFT_CELLS]:
        cell = out / name
        if cell.is_dir():
            parts.append(f"### {name}\n\n{head}\n{cell_table(cell)}\n")
    for name, cell in (extra or {}).items():
        if cell.is_dir():
            parts.append(f"### {name}\n\n{head}\n{cell_table(cell)}\n")
    text = "\n".join(parts)
    (out / "study.md").write_text(text, encoding="utf-8")
    return text


def cell_runs(cell: Path) -> dict[str, dict[int, list[dict]]]:
    """Strategy -> seed -> round rows, of the finished runs of a compare folder."""
    runs: dict[str, dict[int, list[dict]]] = {}
    for run in sorted(p for p in cell.iterdir() if (p / "adapter").is_dir()):
        strategy, _, seed = run.name.rpartition("-seed")
        if strategy and seed.isdigit():  # a hand-made folder (``lora_fair-seed0b``) is not a run
            runs.setdefault(strategy, {})[int(seed)] = read_rounds(run)
    return runs


DRIFT_ORDER = (
    "drift-steps4-alpha10",
    "drift-steps4-alpha0.1",
    "table-one-rank",  # 15 steps, alpha 0.1
    "drift-steps50-alpha10",
    "drift-steps50-alpha0.1",
    "drift-steps50-alpha0.05",
)


def drift_rows(out: Path) -> list[tuple[str, list[int], dict[str, list[float]], list[tuple]]]:
    """Per drift cell with FedIT and LoRA-FAIR at a common seed: label, seeds, finals, cosines.

    ``finals`` maps ``fedit`` / ``lora_fair`` to their final eval losses (same seed order); the
    cosines are LoRA-FAIR's ``(cos_before, cos_after)`` of every round of those seeds.
    """
    rows = []
    for name in (n for n in DRIFT_ORDER if (out / n).is_dir()):
        runs = cell_runs(out / name)
        fair, base = runs.get("lora_fair", {}), runs.get("fedit", {})
        seeds = sorted(set(fair) & set(base))
        if not seeds:
            continue
        cos = [
            (r["lora_fair.cos_before"], r["lora_fair.cos_after"])
            for s in seeds
            for r in fair[s]
            if "lora_fair.cos_before" in r
        ]
        finals = {
            k: [v[s][-1]["eval_loss"] for s in seeds]
            for k, v in (("fedit", base), ("lora_fair", fair))
        }
        label = name.replace("table-one-rank", "drift-steps15-alpha0.1").replace("drift-", "")
        rows.append((label, seeds, finals, cos))
    return rows


def drift_table(out: Path) -> str:
    """Markdown: per drift cell, both strategies' final loss, the paired difference, cosines."""
    lines = [
        "| local steps, alpha | seeds | FedIT | LoRA-FAIR | LoRA-FAIR minus FedIT (paired) "
        "| cos before -> after |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, seeds, finals, cos in drift_rows(out):
        paired = [f - b for f, b in zip(finals["lora_fair"], finals["fedit"], strict=True)]
        before, after = (statistics.fmean(c[i] for c in cos) for i in (0, 1))
        steps, _, alpha = label.removeprefix("steps").partition("-alpha")
        lines.append(
            f"| {steps}, {alpha} | {','.join(map(str, seeds))} | {mean_std(finals['fedit'])} "
            f"| {mean_std(finals['lora_fair'])} | {mean_std(paired)} "
            f"| {before:.4f} -> {after:.4f} |"
        )
    return "\n".join(lines)


def plot_drift(out: Path, path: Path | None = None) -> Path | None:
    """Plot LoRA-FAIR's cosines and its paired final-loss gain over FedIT, per drift cell.

    Into ``path`` (default ``<out>/drift.png``); a cell counts if it holds both strategies at a
    common seed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (
            f"{label} (n={len(seeds)})",
            cos,
            [b - f for b, f in zip(finals["fedit"], finals["lora_fair"], strict=True)],
        )
        for label, seeds, finals, cos in drift_rows(out)
    ]
    if not rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    x = range(len(rows))
    for i, which in ((0, "before"), (1, "after")):
        means = [statistics.fmean(1 - c[i] for c in cos) for _, cos, _ in rows]
        left.plot(x, means, marker="o", label=f"1 - cos {which} correction")
    left.set_yscale("log")
    left.set_ylabel("1 - cos to sum_k p_k B_k A_k (round mean)", fontsize=9)
    gains = [statistics.fmean(g) for _, _, g in rows]
    spread = [statistics.stdev(g) if len(g) > 1 else 0.0 for _, _, g in rows]
    right.errorbar(x, gains, yerr=spread, marker="o", capsize=4)
    right.axhline(0, color="grey", lw=0.8)
    right.set_ylabel("FedIT - LoRA-FAIR final eval loss, paired", fontsize=9)
    for ax in (left, right):
        ax.set_xticks(list(x), [r[0] for r in rows], rotation=20, fontsize=8)
    left.legend()
    fig.suptitle(
        "LoRA-FAIR vs FedIT as clients drift (tiny model, 5 clients, rank 16, 4 rounds; "
        "mean ± std over seeds; > 0: LoRA-FAIR better)",
        fontsize=10,
    )
    fig.tight_layout()
    path = path or out / "drift.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("table", "drift", "report"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--cells", default="", help="comma-separated cell names (default: all)")
    parser.add_argument("--figure", type=Path, help="where to write the drift figure")
    parser.add_argument("--strategies", default="", help="comma-separated (default: the part's)")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another compare folder for the report's tables (repeatable), e.g. a SmolLM2 one",
    )
    args = parser.parse_args()
    cells = TABLE_CELLS if args.part == "table" else DRIFT_CELLS if args.part == "drift" else {}
    wanted = set(args.cells.split(",")) if args.cells else set(cells)
    strategies = TABLE_STRATEGIES if args.part == "table" else ("fedit", "lora_fair")
    strategies = tuple(args.strategies.split(",")) if args.strategies else strategies
    for name, overrides in cells.items():
        if name in wanted:
            run_cell(args.out / name, strategies, overrides, args.seeds)
    extra = {}
    for text in args.extra:
        name, sep, folder = text.partition("=")
        if not sep or not Path(folder).is_dir():
            parser.error(f"--extra {text!r}: expected NAME=DIR with an existing DIR")
        extra[name] = Path(folder)
    print(report(args.out, extra))
    plot_drift(args.out, args.figure)


if __name__ == "__main__":
    main()
