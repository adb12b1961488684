"""Compare strategies on one scenario over several seeds: tables, paired differences, a plot.

``fedft compare SCENARIO --strategies fedit,lora_fair --seeds 0,1,2`` runs every (strategy, seed)
pair as its own ``fedft simulate`` process (same scenario, same seed: same data split, same
initial adapter, same sampled clients and eval examples), showing each run's rounds as they
finish and keeping each run's whole log in its folder (``<out>/<strategy>-seed<N>/simulate.log``).
A run folder that already holds a finished run of the same scenario (its ``config.toml`` equal to
this one's, every round in its ``metrics.jsonl``) is reused, not run again: a comparison stopped
part-way (Ctrl-C, a crash, a closed laptop) continues where it stopped when started again with
the same ``--out``. Then it writes into ``out``:

- ``comparison.md``: each strategy's figures, mean ± standard deviation over the ``n`` seeds
  (:func:`fedft.compare_table.markdown_table`), and per round each strategy's paired difference
  against the baseline (the first strategy, or ``--baseline``): on each seed strategy minus
  baseline, then mean ± std over seeds (:func:`fedft.compare_table.paired_table`);
- ``comparison.json``: the per-run summaries and the paired differences;
- ``comparison.png``: :func:`fedft.plots.comparison_figure`, with the paired eval-loss difference.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedft.compare_table import (
    PAIRED_KEYS,
    markdown_table,
    paired_differences,
    paired_table,
    summarize,
)
from fedft.config import Scenario, load_scenario, read_toml
from fedft.errors import ConfigError
from fedft.plots import plot_comparison
from fedft.report import read_metrics
from fedft.run_folder import stored_config

__all__ = ["compare", "finished_rounds", "markdown_table", "run_one", "summarize"]

log = logging.getLogger("fedft")

LOG_NAME = "simulate.log"
"""A run's whole console output, kept in its run folder."""


def run_one(
    scenario: Path | None, overrides: Sequence[str], run_dir: Path, label: str = ""
) -> list[dict[str, Any]]:
    """Run one simulation in a fresh process; log its round lines; return its round rows.

    ``scenario`` None runs the built-in defaults (an installed copy without simulations/).
    Everything the process prints goes to ``run_dir/simulate.log``; each of its round lines
    (``round k/R | ...``) is also logged here, prefixed with ``label``.
    """
    named = [] if scenario is None else [str(scenario)]
    args = [sys.executable, "-m", "fedft.cli", "simulate", *named, "--out", str(run_dir)]
    for text in overrides:
        args += ["--set", text]
    run_dir.mkdir(parents=True, exist_ok=True)
    last = "(no output)"
    with (run_dir / LOG_NAME).open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            out.flush()
            text = line.strip()
            if text:
                last = text
            if text.startswith("round "):
                log.info("%s%s", f"{label}: " if label else "", text)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"simulation {run_dir.name} failed: {last} (log: {run_dir / LOG_NAME})")
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "round"]


def finished_rounds(
    scenario: Path | None, overrides: Sequence[str], run_dir: Path
) -> list[dict[str, Any]] | None:
    """The round rows of a finished run of the same scenario in ``run_dir``, or None.

    Finished: ``run_dir/config.toml`` records exactly the scenario ``scenario`` plus
    ``overrides`` gives (a changed key or a changed default means running again), and
    ``metrics.jsonl`` has a round row for every round up to ``federation.num_rounds``.
    """
    stored = run_dir / "config.toml"
    if not stored.is_file() or not (run_dir / "metrics.jsonl").is_file():
        return None
    try:
        wanted = stored_config(load_scenario(scenario, overrides))
        found = stored_config(Scenario.from_dict(read_toml(stored)))
        rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "round"]
    except (ConfigError, OSError, ValueError):
        return None
    rounds = {r.get("round") for r in rows}
    if found != wanted or not set(range(1, wanted["federation"]["num_rounds"] + 1)) <= rounds:
        return None
    return rows


def compare(
    scenario: Path | None,
    strategies: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str],
    out: Path,
    baseline: str | None = None,
) -> str:
    """Run every (strategy, seed), write tables, JSON and plot into ``out``; return the tables.

    ``baseline`` (default: the first strategy) is what the paired differences subtract.
    """
    baseline = baseline or strategies[0]
    if baseline not in strategies:
        from fedft.errors import ConfigError

        raise ConfigError("--baseline", f"{baseline!r} is not one of --strategies")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {s: [] for s in strategies}
    curves: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in strategies}
    total, done = len(seeds) * len(strategies), 0
    for seed in seeds:
        for strategy in strategies:
            name = f"{strategy}-seed{seed}"
            done += 1
            extra = [f"federation.strategy='{strategy}'", f"run.seed={seed}", f"run.name='{name}'"]
            rounds = finished_rounds(scenario, [*overrides, *extra], out / name)
            if rounds is not None:
                log.info(
                    "compare [%d/%d]: %s finished earlier with this scenario: reused "
                    "(delete %s to run it again)",
                    done,
                    total,
                    name,
                    out / name,
                )
            else:
                log.info(
                    "compare [%d/%d]: running %s (log: %s)",
                    done,
                    total,
                    name,
                    out / name / LOG_NAME,
                )
                rounds = run_one(
                    scenario, [*overrides, *extra], out / name, f"[{done}/{total}] {name}"
                )
            results[strategy].append(summarize(rounds))
            curves[strategy].append(rounds)
    paired = paired_table(curves, baseline)
    table = markdown_table(results)
    text = f"mean ± std over n seeds ({', '.join(map(str, seeds))})\n\n{table}\n"
    if paired:
        text += f"\npaired difference per round against {baseline} (same seed), mean ± std\n\n"
        text += paired + "\n"
    (out / "comparison.md").write_text(text, encoding="utf-8")
    differences = {
        key: {
            s: {str(r): d for r, d in per_round.items()}
            for s, per_round in paired_differences(curves, baseline, key).items()
        }
        for key in PAIRED_KEYS
    }
    record = {"seeds": list(seeds), "baseline": baseline, "runs": results, "paired": differences}
    (out / "comparison.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    name = scenario.stem if scenario is not None else "defaults"
    title = (
        f"{name}: {', '.join(strategies)} over seeds {', '.join(map(str, seeds))} "
        "(thin: a seed; thick: mean; band: min-max)"
    )
    plot_comparison(curves, out / "comparison.png", title, baseline)
    return text
