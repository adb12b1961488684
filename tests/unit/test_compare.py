"""`fedft compare`'s figures: summaries, paired differences per round, the tables' formatting."""

import json
import math

import pytest

from fedft.compare_table import (
    format_spread,
    markdown_table,
    paired_differences,
    paired_table,
    summarize,
)
from fedft.report import read_metrics


def _rounds(losses, up, down, rouge=None):
    rows = [{"round": 0, "eval_loss": losses[0], "accuracy": 0.0, "bytes_up": 0, "bytes_down": 0}]
    for r, loss in enumerate(losses[1:], start=1):
        rows.append(
            {"round": r, "eval_loss": loss, "accuracy": 0.1 * r, "bytes_up": up, "bytes_down": down}
        )
    for row, value in zip(rows, rouge or [], strict=False):
        row["rouge_l"] = value
    return rows


def test_summary_takes_the_final_round_and_means_over_trained_rounds():
    rows = _rounds([6.0, 3.0, 2.0], up=100, down=1500)
    rows[1]["bytes_down"] = 2500  # the scenario's text goes out in round 1 only
    rows[1]["lora_fair.cos_before"], rows[2]["lora_fair.cos_before"] = 0.99998, 0.99996
    out = summarize(rows)
    assert out["eval_loss"] == 2.0 and math.isclose(out["accuracy"], 0.2)
    assert out["bytes_up"] == 100 and out["bytes_down"] == 2000  # round 0 sent nothing: left out
    assert out["lora_fair.cos_before"] == pytest.approx(3e-5)  # 1 - mean cos
    assert math.isnan(out["lora_fair.cos_after"]) and math.isnan(out["rouge_l"])


def test_generation_metrics_take_the_last_round_that_scored_them():
    rows = _rounds([6.0, 3.0, 2.0], 1, 1, rouge=[0.1, 0.3])  # round 2 did not generate
    assert summarize(rows)["rouge_l"] == 0.3


def test_format_spread_shows_the_digits_of_the_spread():
    assert format_spread([1.0, 1.2]) == "1.100 ± 0.141"
    assert format_spread([2.30001, 2.30003]) == "2.300020 ± 0.000014"
    assert format_spread([1.2e-5, 1.4e-5]) == "1.300e-05 ± 1.4e-06"  # 1 - cos of LoRA-FAIR
    assert format_spread([143.5, 143.5], integer=True) == "144"  # bytes: no "± 0.0000"
    assert format_spread([1000.0, 1200.0], integer=True) == "1,100 ± 141"
    assert format_spread([0.25]) == "0.2500"
    assert format_spread([math.nan]) == "-"


def test_table_has_a_row_per_strategy_with_n_mean_and_spread():
    results = {
        "fedit": [
            summarize(_rounds([6.0, 1.0], 380_000, 381_000)),
            summarize(_rounds([6, 1.2], 380_000, 381_000)),
        ],
        "zo": [summarize(_rounds([6.0, 5.0], 85, 1_700))],
    }
    lines = markdown_table(results).splitlines()
    assert lines[0].startswith("| strategy | n (seeds) | final eval loss |")
    assert "bytes down / round" in lines[0] and "ROUGE-L" not in lines[0]  # nobody scored it
    assert "cos" not in lines[0]  # no LoRA-FAIR run
    fedit, zo = lines[2], lines[3]
    assert fedit.startswith("| fedit | 2 | 1.100 ± 0.141 |") and "| 381,000 |" in fedit
    assert zo.startswith("| zo | 1 | 5.0000 |") and "| 1,700 |" in zo


def test_plain_text_table_drops_whole_text_accuracy():
    plain = [{"round": 0, "eval_loss": 5.0, "token_accuracy": 0.1}]
    plain.append({"round": 1, "eval_loss": 4.0, "token_accuracy": 0.2, "bytes_up": 9})
    header = markdown_table({"fedit": [summarize(plain)]}).splitlines()[0]
    assert "token accuracy" in header and "teacher-forced" not in header


def write_run(folder, losses, rouge):
    """A metrics.jsonl as a run writes it: client rows between round rows."""
    folder.mkdir(parents=True)
    lines = []
    for r, (loss, score) in enumerate(zip(losses, rouge, strict=True)):
        if r:
            lines.append({"kind": "client", "round": r, "node": 1, "train_loss": 1.0})
        lines.append({"kind": "round", "round": r, "eval_loss": loss, "rouge_l": score})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return [x for x in read_metrics(folder / "metrics.jsonl") if x["kind"] == "round"]


@pytest.fixture
def curves(tmp_path):
    # Seed 1 is harder for everyone (+1 loss): paired differences do not see it.
    return {
        "fedit": [
            write_run(tmp_path / "fedit-seed0", [5.0, 3.0, 2.0], [0.0, 0.2, 0.4]),
            write_run(tmp_path / "fedit-seed1", [6.0, 4.0, 3.0], [0.0, 0.1, 0.3]),
        ],
        "lora_fair": [
            write_run(tmp_path / "lora_fair-seed0", [5.0, 2.9, 1.8], [0.0, 0.25, 0.5]),
            write_run(tmp_path / "lora_fair-seed1", [6.0, 3.9, 2.9], [0.0, 0.1, 0.3]),
        ],
    }


def test_paired_differences_subtract_the_baseline_seed_by_seed(curves):
    loss = paired_differences(curves, "fedit", "eval_loss")["lora_fair"]
    assert list(loss) == [0, 1, 2]
    assert loss[0] == [0.0, 0.0]
    assert loss[1] == pytest.approx([-0.1, -0.1])
    assert loss[2] == pytest.approx([-0.2, -0.1])
    rouge = paired_differences(curves, "fedit", "rouge_l")["lora_fair"]
    assert rouge[2] == pytest.approx([0.1, 0.0])
    other_way = paired_differences(curves, "lora_fair", "eval_loss")["fedit"]
    assert other_way[2] == pytest.approx([0.2, 0.1])


def test_paired_table_rows_per_round_with_n(curves):
    lines = paired_table(curves, "fedit").splitlines()
    assert lines[0] == "| round | lora_fair - fedit: eval_loss | lora_fair - fedit: rouge_l |"
    assert lines[3] == "| 1 | -0.1000 (n=2) | 0.025 ± 0.035 (n=2) |"
    assert lines[4].startswith("| 2 | -0.150 ± 0.071 (n=2) |")
    assert paired_table({"fedit": curves["fedit"]}, "fedit") == ""
