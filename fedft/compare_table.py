"""``fedft compare``'s figures: per-run summaries, paired differences, and their markdown tables.

Pure functions of ``metrics.jsonl`` round rows (no runs are started here):

- :func:`summarize`: one run's final-round figures and means over its trained rounds;
- :func:`paired_differences`: per round, for each seed, strategy minus baseline on the same seed
  (same data split, same initial adapter, same sampled clients and eval examples), then the mean
  and standard deviation of those differences over seeds;
- :func:`markdown_table`, :func:`paired_table`: the tables, each number with the precision its
  spread calls for (:func:`format_spread`).

A paired difference removes what two strategies share on a seed (its clients, its batches, its
initial adapter): its spread over seeds is the spread of the effect, not of the sampling.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

Rows = Sequence[Mapping[str, Any]]

FINAL_KEYS = (
    ("eval_loss", "final eval loss", "lower"),
    ("exact_match", "final exact match", "higher"),
    ("rouge_l", "final ROUGE-L", "higher"),
    ("local_rouge_l", "final local ROUGE-L", "higher"),
    ("accuracy", "final accuracy (teacher-forced)", "higher"),
    ("token_accuracy", "final token accuracy", "higher"),
)
"""Round-row keys whose last recorded value is a run's figure; a column only if a run has it."""

MEAN_KEYS = (
    ("lora_fair.cos_before", "1 - cos before (mean)"),
    ("lora_fair.cos_after", "1 - cos after (mean)"),
    ("bytes_up", "bytes up / round"),
    ("bytes_down", "bytes down / round"),
)
"""Round-row keys averaged over trained rounds (cosines shown as 1 - cos: the effect is ~1e-5)."""

PAIRED_KEYS = ("eval_loss", "rouge_l", "exact_match")
"""Metrics whose per-round paired difference against the baseline is reported."""

_ONE_MINUS = ("lora_fair.cos_before", "lora_fair.cos_after")
_INTEGER = ("bytes_up", "bytes_down")


def summarize(rounds: Rows) -> dict[str, float]:
    """One run's figures: last recorded value of :data:`FINAL_KEYS`, means of :data:`MEAN_KEYS`.

    ``1 - cos`` replaces each LoRA-FAIR cosine. A key the run never recorded is NaN.
    """
    out: dict[str, float] = {}
    for key, _, _ in FINAL_KEYS:
        values = [r[key] for r in rounds if key in r]
        out[key] = float(values[-1]) if values else math.nan
    trained = [r for r in rounds if r["round"] > 0]
    for key, _ in MEAN_KEYS:
        values = [float(r[key]) for r in trained if key in r]
        mean = statistics.fmean(values) if values else math.nan
        out[key] = 1.0 - mean if key in _ONE_MINUS else mean
    return out


def format_spread(values: Sequence[float], integer: bool = False) -> str:
    """``mean ± std`` of ``values`` (NaN dropped), with the digits the spread shows.

    The standard deviation keeps two significant digits and the mean as many decimals; values
    under 1e-3 go to scientific notation; ``integer`` values print as whole numbers. One value
    (or no spread) prints alone. ``-`` when nothing is left.
    """
    values = [v for v in values if v == v]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    if integer:
        return f"{mean:,.0f}" if round(std) == 0 else f"{mean:,.0f} ± {std:,.0f}"
    scale = max(abs(mean), std)
    if 0 < scale < 1e-3:
        return f"{mean:.3e}" if std == 0 else f"{mean:.3e} ± {std:.1e}"
    if std == 0:
        return f"{mean:.4f}"
    decimals = min(max(1 - math.floor(math.log10(std)), 3), 8)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _present(results: Mapping[str, Sequence[Mapping[str, float]]], key: str) -> bool:
    return any(
        run.get(key, math.nan) == run.get(key, math.nan)
        for runs in results.values()
        for run in runs
    )


def markdown_table(results: Mapping[str, Sequence[Mapping[str, float]]]) -> str:
    """One row per strategy: ``n`` seeds, then mean ± standard deviation over them.

    Only the columns some run recorded: a plain-text scenario has no exact match or ROUGE-L, a
    run without LoRA-FAIR no cosines.
    """
    columns = [(k, title) for k, title, _ in FINAL_KEYS] + list(MEAN_KEYS)
    columns = [(k, title) for k, title in columns if _present(results, k)]
    header = "| strategy | n (seeds) | " + " | ".join(title for _, title in columns) + " |"
    lines = [header, "|" + " --- |" * (len(columns) + 2)]
    for strategy, runs in results.items():
        cells = [format_spread([run[k] for run in runs], k in _INTEGER) for k, _ in columns]
        lines.append(f"| {strategy} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(
    curves: Mapping[str, Sequence[Rows]], baseline: str, key: str
) -> dict[str, dict[int, list[float]]]:
    """Per strategy other than ``baseline``, per round, the differences over seeds.

    ``curves[s][i]`` are strategy ``s``'s round rows on the ``i``-th seed (the same seed order for
    every strategy). For each seed and each round both runs recorded ``key``:
    ``d = value(strategy) - value(baseline)``.

    Returns
    -------
    dict of str to dict of int to list of float
        ``{strategy: {round: [d_seed0, d_seed1, ...]}}``, rounds in order.
    """
    base_runs = curves[baseline]
    out: dict[str, dict[int, list[float]]] = {}
    for strategy, runs in curves.items():
        if strategy == baseline:
            continue
        per_round: dict[int, list[float]] = {}
        for rows, base_rows in zip(runs, base_runs, strict=True):
            base = {r["round"]: r[key] for r in base_rows if key in r}
            for r in rows:
                if key in r and r["round"] in base:
                    per_round.setdefault(r["round"], []).append(r[key] - base[r["round"]])
        out[strategy] = dict(sorted(per_round.items()))
    return out


def paired_table(curves: Mapping[str, Sequence[Rows]], baseline: str) -> str:
    """Per round, each strategy minus ``baseline`` on the same seed: mean ± std over seeds (n).

    One column per (strategy, metric of :data:`PAIRED_KEYS` that both recorded); a row per round.
    Empty when there is only the baseline.
    """
    columns: list[tuple[str, str, dict[int, list[float]]]] = []
    for key in PAIRED_KEYS:
        for strategy, per_round in paired_differences(curves, baseline, key).items():
            if per_round:
                columns.append((strategy, key, per_round))
    if not columns:
        return ""
    rounds = sorted({r for _, _, per_round in columns for r in per_round})
    titles = [f"{s} - {baseline}: {key}" for s, key, _ in columns]
    lines = ["| round | " + " | ".join(titles) + " |", "|" + " --- |" * (len(columns) + 1)]
    for r in rounds:
        cells = []
        for _, _, per_round in columns:
            diffs = per_round.get(r, [])
            cells.append(f"{format_spread(diffs)} (n={len(diffs)})" if diffs else "-")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
