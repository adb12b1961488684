"""The run folder's ``metrics.png`` and ``fedft compare``'s ``comparison.png``.

Both are built as matplotlib figures by a function that returns the figure (tests read its ticks,
titles, lines and bands) and saved by a thin wrapper. Rounds are whole numbers on every axis; bytes
are labelled in B / kB / MB / GB (powers of 1000, as the progress line counts them).
"""

from __future__ import annotations

import math
import statistics
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Rows = Sequence[Mapping[str, Any]]

_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LOG_BYTES_ABOVE = 30.0
"""The bytes axis is logarithmic when its largest value exceeds its smallest this many times."""


def human_bytes(value: float, _pos: object = None) -> str:
    """``1500000`` -> ``"1.5 MB"``: SI units (1 kB = 1000 B), at most three significant digits."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} B"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_rounds(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")


def _byte_axis(ax: Axes, axis: str = "x", decades: float = 0.0) -> None:
    """Label bytes in B/kB/MB/GB; logarithmic when the data span ``decades`` > 0 decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    if decades > 0:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        subs = (1.0, 2.0, 5.0) if decades <= 2 else (1.0,)  # 1-2-5 ticks would crowd many decades
        target.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
        target.set_minor_formatter(NullFormatter())
    target.set_major_formatter(FuncFormatter(human_bytes))


def run_title(config_path: Path) -> str:
    """``"<run.name>: <strategy>, N clients, R rounds"`` from a run folder's ``config.toml``."""
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return config_path.parent.name
    run, fed = raw.get("run", {}), raw.get("federation", {})
    return (
        f"{run.get('name', config_path.parent.name)}: {fed.get('strategy', '?')}, "
        f"{fed.get('num_clients', '?')} clients, {fed.get('num_rounds', '?')} rounds"
    )


QUALITY_LINES = {
    "generation": (
        ("exact_match", "o-", "global exact match"),
        ("rouge_l", "s-", "global ROUGE-L"),
        ("local_exact_match", "o:", "clients' own exact match"),
        ("local_rouge_l", "s:", "clients' own ROUGE-L"),
    ),
    "accuracy": (("accuracy", "o-", "_nolegend_"),),
    "tokens": (
        ("token_accuracy", "o-", "global"),
        ("local_token_accuracy", "s:", "clients' own"),
    ),
}
"""Per kind of data (:func:`quality_kind`): the round-row keys of the quality panel."""

QUALITY_LABELS = {
    "generation": "greedy answers (exact match, ROUGE-L)",
    "accuracy": "global exact-match accuracy",
    "tokens": "next-token accuracy",
}


def quality_kind(rounds: Rows) -> str:
    """What the quality panel shows: ``generation``, ``accuracy`` or ``tokens``.

    ``generation`` when answers were scored (``rouge_l``), ``accuracy`` when only the
    teacher-forced exact match was (instruction data, older runs), else ``tokens`` (plain text).
    """
    if any("rouge_l" in r for r in rounds):
        return "generation"
    if any("accuracy" in r for r in rounds):
        return "accuracy"
    return "tokens"


def metrics_figure(rows: Rows, title: str) -> Figure:
    """Loss, answer quality (or accuracy) and cumulative bytes over rounds of one run.

    The middle panel shows the greedy answers' exact match and ROUGE-L, global and the clients'
    own, when the run scored answers; else the teacher-forced exact match; on plain text the
    next-token accuracy (:func:`quality_kind`).

    Parameters
    ----------
    rows : sequence of mapping
        ``metrics.jsonl``'s rows (only ``kind = "round"`` ones are drawn).
    title : str
        The figure's title (scenario name and strategy: :func:`run_title`).

    Returns
    -------
    matplotlib.figure.Figure
        Three axes: loss (global eval, mean train), accuracy, bytes (up + down, and up); with
        ``[privacy]``, a fourth: the epsilon spent, on the loss panel's right.
    """
    plt = _pyplot()
    rounds = [r for r in rows if r.get("kind", "round") == "round"]
    xs = [r["round"] for r in rounds]
    fig, (ax_loss, ax_acc, ax_bytes) = plt.subplots(1, 3, figsize=(12, 3.8))
    ax_loss.plot(xs, [r.get("eval_loss", float("nan")) for r in rounds], "o-", label="global eval")
    trained = [r for r in rounds if "train_loss" in r]
    ax_loss.plot(
        [r["round"] for r in trained], [r["train_loss"] for r in trained], "s--", label="mean train"
    )
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    spent = [r for r in rounds if "privacy.epsilon" in r]
    if spent:  # [privacy]: the epsilon spent so far, on the loss panel's right axis
        ax_eps = ax_loss.twinx()
        ax_eps.plot(
            [r["round"] for r in spent],
            [r["privacy.epsilon"] for r in spent],
            "^:",
            color="C2",
            label="epsilon spent",
        )
        ax_eps.set_ylabel("epsilon spent (privacy)")
        ax_eps.legend(loc="upper center", fontsize="small")
    for key, style, label in QUALITY_LINES[quality_kind(rounds)]:
        scored = [r for r in rounds if key in r]
        ax_acc.plot([r["round"] for r in scored], [r[key] for r in scored], style, label=label)
    ax_acc.set_ylabel(QUALITY_LABELS[quality_kind(rounds)])
    ax_acc.set_ylim(-0.02, 1.02)
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(fontsize="small")
    total, up, cum_total, cum_up = 0, 0, [], []
    for r in rounds:
        total += r.get("bytes_up", 0) + r.get("bytes_down", 0)
        up += r.get("bytes_up", 0)
        cum_total.append(total)
        cum_up.append(up)
    ax_bytes.plot(xs, cum_total, "o-", color="C3", label="up + down")
    ax_bytes.plot(xs, cum_up, "s--", color="C4", label="up")
    ax_bytes.set_ylabel("bytes sent, cumulative (all clients)")
    _byte_axis(ax_bytes, "y")
    ax_bytes.legend()
    for ax in (ax_loss, ax_acc, ax_bytes):
        _integer_rounds(ax)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_metrics(rows: Rows, config_path: Path, png_path: Path) -> None:
    """Draw :func:`metrics_figure` of a run's ``metrics.jsonl`` rows into ``png_path``.

    ``config_path`` is the run's ``config.toml`` (its title); the rows come from
    :func:`fedft.report.read_metrics` (read by the caller: this module imports no run-folder code).
    """
    fig = metrics_figure(rows, run_title(config_path))
    fig.savefig(png_path, dpi=100)
    _pyplot().close(fig)


def _mean_band(
    ax: Axes, xs_runs: list[list[float]], ys_runs: list[list[float]], style: dict, label: str
) -> None:
    """Thin per-seed lines, the mean over seeds (thick, marked) and a min-max band."""
    n = min(len(ys) for ys in ys_runs)
    for xs, ys in zip(xs_runs, ys_runs, strict=True):
        ax.plot(xs[:n], ys[:n], color=style["color"], ls=style["linestyle"], lw=0.8, alpha=0.35)
    x_mean = [statistics.fmean(xs[i] for xs in xs_runs) for i in range(n)]
    y_mean = [statistics.fmean(ys[i] for ys in ys_runs) for i in range(n)]
    low = [min(ys[i] for ys in ys_runs) for i in range(n)]
    high = [max(ys[i] for ys in ys_runs) for i in range(n)]
    ax.fill_between(x_mean, low, high, color=style["color"], alpha=0.15, lw=0)
    ax.plot(x_mean, y_mean, lw=2, markersize=5, label=f"{label} (mean of {len(ys_runs)})", **style)


def comparison_figure(
    curves: Mapping[str, Sequence[Rows]], title: str, baseline: str | None = None
) -> Figure:
    """Eval loss and answer quality over rounds, eval loss against bytes up, paired differences.

    Each strategy gets its own colour, line style and marker (two strategies with equal curves
    stay visible: a dashed line over a solid one); each seed is a thin line, the mean over seeds a
    thick one, and a band spans the seeds' minimum to maximum. The quality panel is ROUGE-L of
    greedy answers when the runs scored them, else accuracy (:func:`quality_kind`). With a
    ``baseline`` and another strategy, a fourth panel shows each strategy's eval loss minus the
    baseline's on the same seed, per round (mean over seeds, band min-max).

    Parameters
    ----------
    curves : mapping of str to sequence of rows
        Per strategy, per seed, the run's ``kind = "round"`` rows (round 0 first).
    title : str
        The figure's title (scenario name).
    baseline : str, optional
        The strategy the paired differences subtract.

    Returns
    -------
    matplotlib.figure.Figure
        Three axes (four with a paired panel); each holds, per strategy, one line per seed, one
        mean line and one band.
    """
    plt = _pyplot()
    paired = baseline is not None and baseline in curves and len(curves) > 1
    fig, axes = plt.subplots(1, 4 if paired else 3, figsize=(18 if paired else 14, 4.2))
    by_round, acc_round, by_bytes = axes[:3]
    colors = plt.get_cmap("tab10").colors
    all_rows = [r for runs in curves.values() for rows in runs for r in rows]
    kind = quality_kind(all_rows)
    quality = {"generation": "rouge_l", "accuracy": "accuracy", "tokens": "token_accuracy"}[kind]
    for k, (strategy, runs) in enumerate(curves.items()):
        style = {
            "color": colors[k % len(colors)],
            "linestyle": _STYLES[k % len(_STYLES)],
            "marker": _MARKERS[k % len(_MARKERS)],
        }
        rounds = [[r["round"] for r in rows] for rows in runs]
        losses = [[r["eval_loss"] for r in rows] for rows in runs]
        _mean_band(by_round, rounds, losses, style, strategy)
        scored = [[r for r in rows if quality in r] for rows in runs]
        if all(scored):
            qx = [[r["round"] for r in rows] for rows in scored]
            _mean_band(
                acc_round, qx, [[r[quality] for r in rows] for rows in scored], style, strategy
            )
        if paired and strategy != baseline:
            base_runs = curves[str(baseline)]
            diffs = [
                [a["eval_loss"] - b["eval_loss"] for a, b in zip(rows, base, strict=False)]
                for rows, base in zip(runs, base_runs, strict=True)
            ]
            _mean_band(axes[3], rounds, diffs, style, strategy)
        sent = []  # round 0 (the untrained adapter) has sent nothing: trained rounds only
        for rows in runs:
            total, xs = 0, []
            for r in rows[1:]:
                total += r["bytes_up"]
                xs.append(total)
            sent.append(xs)
        _mean_band(by_bytes, sent, [ys[1:] for ys in losses], style, strategy)
    by_round.set_ylabel("global eval loss")
    acc_round.set_ylabel(
        {"generation": "global ROUGE-L of greedy answers"}.get(
            kind, f"global {QUALITY_LABELS[kind]}"
        )
    )
    for ax in (by_round, acc_round):
        _integer_rounds(ax)
    if paired:
        axes[3].axhline(0.0, color="0.4", lw=1)
        axes[3].set_ylabel(f"eval loss - {baseline}'s (paired by seed)")
        _integer_rounds(axes[3])
    by_bytes.set_ylabel("global eval loss")
    sent_all = [x for line in by_bytes.lines for x in line.get_xdata() if x > 0]
    # A log axis only when strategies differ by orders of magnitude (zo's bytes against factors')
    ratio = max(sent_all) / min(sent_all) if sent_all else 1.0
    decades = math.log10(ratio) if ratio > LOG_BYTES_ABOVE else 0.0
    scale = "log scale" if decades else "linear"
    by_bytes.set_xlabel(f"bytes sent up, cumulative (all clients; {scale})")
    _byte_axis(by_bytes, "x", decades)
    for ax in axes:
        ax.grid(alpha=0.3, which="major")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_comparison(
    curves: Mapping[str, Sequence[Rows]], path: Path, title: str, baseline: str | None = None
) -> None:
    """Draw :func:`comparison_figure` into ``path``."""
    fig = comparison_figure(curves, title, baseline)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
