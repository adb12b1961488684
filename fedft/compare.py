"""Compare strategies on one scenario over several seeds: a table and a plot.

``fedft compare SCENARIO --strategies fedit,lora_fair --seeds 0,1,2`` runs every (strategy, seed)
pair as its own ``fedft simulate`` process (same scenario, same seeds: same data split, same
initial adapter), then summarizes each strategy's final-round metrics as mean and standard deviation
over seeds in ``comparison.md`` / ``comparison.json`` and plots eval loss and accuracy over rounds
and eval loss against bytes sent up in ``comparison.png`` (:func:`fedft.plots.comparison_figure`).
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedft.plots import plot_comparison
from fedft.report import read_metrics

log = logging.getLogger("fedft")

COLUMNS = (
    ("eval_loss", "final eval loss"),
    ("accuracy", "final accuracy"),
    ("lora_fair.cos_before", "mean cos before"),
    ("lora_fair.cos_after", "mean cos after"),
    ("bytes_up", "bytes up / round"),
    ("bytes_down", "bytes down / round"),
)


def run_one(scenario: Path | None, overrides: Sequence[str], run_dir: Path) -> list[dict[str, Any]]:
    """Run one simulation in a fresh process and return its round rows.

    ``scenario`` None runs the built-in defaults (an installed copy without simulations/).
    """
    named = [] if scenario is None else [str(scenario)]
    args = [sys.executable, "-m", "fedft.cli", "simulate", *named, "--out", str(run_dir)]
    for text in overrides:
        args += ["--set", text]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"simulation {run_dir.name} failed: {tail[0]}")
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "round"]


def summarize(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """One run's figures: final-round eval metrics and means over rounds of the cosines."""
    final = rounds[-1]
    trained = [r for r in rounds if r["round"] > 0]
    out = {"eval_loss": final["eval_loss"], "accuracy": final.get("accuracy", float("nan"))}
    for key in ("lora_fair.cos_before", "lora_fair.cos_after", "bytes_up", "bytes_down"):
        values = [r[key] for r in trained if key in r]
        out[key] = statistics.fmean(values) if values else float("nan")
    return out


def _cell(values: list[float]) -> str:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "-"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    if abs(mean) >= 1000:
        return f"{mean:,.0f} ± {spread:,.0f}"
    return f"{mean:.4f} ± {spread:.4f}"


def markdown_table(results: dict[str, list[dict[str, float]]]) -> str:
    """Mean ± standard deviation over seeds, one row per strategy."""
    header = "| strategy | seeds | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(COLUMNS) + 2)]
    for strategy, runs in results.items():
        cells = [_cell([run[key] for run in runs]) for key, _ in COLUMNS]
        lines.append(f"| {strategy} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(
    scenario: Path | None,
    strategies: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str],
    out: Path,
) -> str:
    """Run every (strategy, seed), write the table, JSON and plot into ``out``; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {s: [] for s in strategies}
    curves: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in strategies}
    for seed in seeds:
        for strategy in strategies:
            name = f"{strategy}-seed{seed}"
            log.info("compare: running %s", name)
            extra = [f"federation.strategy='{strategy}'", f"run.seed={seed}", f"run.name='{name}'"]
            rounds = run_one(scenario, [*overrides, *extra], out / name)
            results[strategy].append(summarize(rounds))
            curves[strategy].append(rounds)
    table = markdown_table(results)
    (out / "comparison.md").write_text(table + "\n", encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    name = scenario.stem if scenario is not None else "defaults"
    title = (
        f"{name}: {', '.join(strategies)} over seeds {', '.join(map(str, seeds))} "
        "(thin: a seed; thick: mean; band: min-max)"
    )
    plot_comparison(curves, out / "comparison.png", title)
    return table
