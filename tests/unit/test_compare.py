"""`fedft compare`'s summary: final eval figures, means over trained rounds, spread over seeds."""

import math

from fedft.compare import markdown_table, summarize


def _rounds(losses, up, down):
    rows = [{"round": 0, "eval_loss": losses[0], "accuracy": 0.0, "bytes_up": 0, "bytes_down": 0}]
    for r, loss in enumerate(losses[1:], start=1):
        rows.append(
            {"round": r, "eval_loss": loss, "accuracy": 0.1 * r, "bytes_up": up, "bytes_down": down}
        )
    return rows


def test_summary_takes_the_final_round_and_means_over_trained_rounds():
    rows = _rounds([6.0, 3.0, 2.0], up=100, down=1500)
    rows[1]["bytes_down"] = 2500  # the scenario's text goes out in round 1 only
    out = summarize(rows)
    assert out["eval_loss"] == 2.0 and math.isclose(out["accuracy"], 0.2)
    assert out["bytes_up"] == 100 and out["bytes_down"] == 2000  # round 0 sent nothing: left out
    assert math.isnan(out["lora_fair.cos_before"])


def test_table_has_a_row_per_strategy_with_mean_and_spread_over_seeds():
    results = {
        "fedit": [
            summarize(_rounds([6.0, 1.0], 380_000, 381_000)),
            summarize(_rounds([6, 1.2], 380_000, 381_000)),
        ],
        "zo": [summarize(_rounds([6.0, 5.0], 85, 1_700))],
    }
    lines = markdown_table(results).splitlines()
    assert lines[0].startswith("| strategy | seeds | final eval loss")
    assert "bytes down / round" in lines[0]
    fedit, zo = lines[2], lines[3]
    assert fedit.startswith("| fedit | 2 | 1.1000 ± 0.1414 |") and "381,000 ± 0" in fedit
    assert zo.startswith("| zo | 1 | 5.0000 ± 0.0000 |") and "| - | - |" in zo and "1,700 ± 0" in zo
