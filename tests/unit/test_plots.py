"""metrics.png and comparison.png, read as figure objects: ticks, titles, lines and bands."""

from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex

from fedft.plots import comparison_figure, human_bytes, metrics_figure, run_title


def rounds(losses, up=380_000, down=381_000, acc_step=0.1):
    rows = [{"kind": "round", "round": 0, "eval_loss": losses[0], "accuracy": 0.0}]
    rows[0].update(bytes_up=0, bytes_down=0)
    for r, loss in enumerate(losses[1:], start=1):
        rows.append(
            {
                "kind": "round",
                "round": r,
                "eval_loss": loss,
                "train_loss": loss + 0.1,
                "accuracy": acc_step * r,
                "bytes_up": up,
                "bytes_down": down,
            }
        )
    return rows


def visible_ticks(axis, low, high):
    return [t for t in axis.get_majorticklocs() if low <= t <= high]


def test_metrics_figure_has_integer_rounds_a_title_and_accuracy():
    fig = metrics_figure(rounds([6.0, 3.0, 2.0, 1.5]), "default: fedit, 5 clients, 3 rounds")
    fig.canvas.draw()
    assert fig._suptitle.get_text() == "default: fedit, 5 clients, 3 rounds"
    loss, acc, sent = fig.axes
    for ax in (loss, acc, sent):
        ticks = visible_ticks(ax.xaxis, 0, 3)
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert "accuracy" in acc.get_ylabel()
    assert list(acc.lines[0].get_ydata()) == [0.0, 0.1, 0.2, 0.30000000000000004]
    labels = [t.get_text() for t in sent.get_yticklabels() if t.get_text()]
    assert any(label.endswith(("kB", "MB")) for label in labels), labels


def test_run_title_names_the_scenario_and_strategy(tmp_path):
    (tmp_path / "config.toml").write_text(
        '[run]\nname = "noniid"\n[federation]\nstrategy = "lora_fair"\n'
        "num_clients = 4\nnum_rounds = 5\n"
    )
    assert run_title(tmp_path / "config.toml") == "noniid: lora_fair, 4 clients, 5 rounds"


def test_comparison_has_a_colour_per_strategy_seed_lines_mean_and_band():
    curves = {
        "fedit": [rounds([6, 3, 2]), rounds([6, 3.2, 2.1]), rounds([6, 2.9, 1.9])],
        "lora_fair": [rounds([6, 3, 2]), rounds([6, 3.2, 2.1]), rounds([6, 2.9, 1.9])],
        "zo": [rounds([6, 5.5, 5], up=600), rounds([6, 5.4, 5.1], up=600)],
    }
    fig = comparison_figure(curves, "lora_fair_noniid: over seeds 0, 1, 2")
    fig.canvas.draw()
    assert "lora_fair_noniid" in fig._suptitle.get_text()
    by_round, acc, by_bytes = fig.axes
    for ax in fig.axes:
        assert len(ax.lines) == 3 + 3 + 2 + 3  # a thin line per seed, a mean per strategy
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 3  # one band each
        means = [line for line in ax.lines if line.get_linewidth() == 2]
        assert len({to_hex(line.get_color()) for line in means}) == 3
        # equal curves (fedit, lora_fair) stay visible: different line styles and markers
        assert len({(line.get_linestyle(), line.get_marker()) for line in means}) == 3
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "fedit (mean of 3)",
            "lora_fair (mean of 3)",
            "zo (mean of 2)",
        ]
    for ax in (by_round, acc):
        ticks = visible_ticks(ax.xaxis, 0, 2)
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    labels = [t.get_text() for t in by_bytes.get_xticklabels() if t.get_text()]
    assert labels and all(label.endswith((" B", "kB", "MB", "GB")) for label in labels), labels
    assert "10^" not in "".join(labels) and "times" not in "".join(labels)
    assert by_bytes.get_xscale() == "log"  # zo's hundreds of bytes against fedit's megabytes
    assert len(labels) >= 4, labels


def test_comparison_bytes_axis_is_linear_within_one_order_of_magnitude():
    curves = {"fedit": [rounds([6, 3, 2, 1.5])], "lora_fair": [rounds([6, 3, 2.1, 1.4])]}
    fig = comparison_figure(curves, "t")
    fig.canvas.draw()
    by_bytes = fig.axes[2]
    assert by_bytes.get_xscale() == "linear"
    labels = [t.get_text() for t in by_bytes.get_xticklabels() if t.get_text()]
    assert len(labels) >= 3 and all(label.endswith(("kB", "MB")) for label in labels), labels


def test_human_bytes():
    assert human_bytes(600) == "600 B"
    assert human_bytes(1_500) == "1.5 kB"
    assert human_bytes(2_000_000) == "2 MB"
    assert human_bytes(382_000) == "382 kB"
