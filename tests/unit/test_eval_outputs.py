"""Generation metrics where a user reads them: the round line, metrics.png, comparison.png, and
TensorBoard event files beside metrics.jsonl."""

import logging
import struct

import pytest

from fedft.plots import comparison_figure, metrics_figure
from fedft.report import RunRecorder, read_metrics


def generation_rows(losses, rouge):
    rows = []
    for r, (loss, score) in enumerate(zip(losses, rouge, strict=True)):
        row = {"kind": "round", "round": r, "eval_loss": loss, "bytes_up": 100 * r}
        row |= {"bytes_down": 100 * r, "accuracy": 0.0, "token_accuracy": 0.5}
        if score is not None:
            row |= {"exact_match": score / 2, "rouge_l": score, "local_rouge_l": score + 0.1}
        rows.append(row)
    return rows


def test_round_line_and_row_hold_generation_and_local_means(tmp_path, caplog):
    recorder = RunRecorder(tmp_path, {"eval": {"tensorboard": False}}, 1)
    recorder.client(1, 7, {"examples": 30, "local_rouge_l": 0.2, "local_gen_examples": 1})
    recorder.client(1, 8, {"examples": 10, "local_rouge_l": 0.6, "local_gen_examples": 3})
    recorder.client(1, 9, {"examples": 10, "local_eval_loss": 2.0})
    with caplog.at_level(logging.INFO, logger="fedft"):
        row = recorder.round(1, {"eval_loss": 1.5, "exact_match": 0.25, "rouge_l": 0.4321})
    assert row["local_rouge_l"] == pytest.approx((0.2 * 1 + 0.6 * 3) / 4)  # by answers scored
    assert row["local_eval_loss"] == 2.0
    assert "EM 0.25 ROUGE-L 0.432" in caplog.text and "local ROUGE-L 0.500" in caplog.text
    stored = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "round"]
    assert stored[0]["rouge_l"] == 0.4321


def test_round_line_of_plain_text_shows_token_accuracy(tmp_path, caplog):
    recorder = RunRecorder(tmp_path, {}, 1)
    with caplog.at_level(logging.INFO, logger="fedft"):
        recorder.round(0, {"eval_loss": 3.0, "token_accuracy": 0.125})
    assert "tok acc 0.125" in caplog.text and "acc 0.00" not in caplog.text


def test_metrics_figure_shows_greedy_answer_scores():
    rows = generation_rows([5.0, 4.0, 3.0], [0.1, None, 0.3])  # round 1 did not generate
    fig = metrics_figure(rows, "t")
    _, quality, _ = fig.axes
    assert "ROUGE-L" in quality.get_ylabel()
    lines = {line.get_label(): line for line in quality.lines}
    assert list(lines["global ROUGE-L"].get_xdata()) == [0, 2]
    assert list(lines["global ROUGE-L"].get_ydata()) == [0.1, 0.3]
    assert list(lines["clients' own ROUGE-L"].get_ydata()) == [0.2, 0.4]


def test_comparison_figure_plots_rouge_and_the_paired_difference():
    curves = {
        "fedit": [generation_rows([5, 4, 3], [0, 0.2, 0.4]), generation_rows([6, 5, 4], [0] * 3)],
        "zo": [generation_rows([5, 4.5, 4], [0, 0.1, 0.2]), generation_rows([6, 6, 6], [0] * 3)],
    }
    fig = comparison_figure(curves, "t", baseline="fedit")
    by_round, quality, by_bytes, paired = fig.axes
    assert "ROUGE-L" in quality.get_ylabel() and "fedit" in paired.get_ylabel()
    mean = [line for line in paired.lines if line.get_linewidth() == 2]
    assert len(mean) == 1  # zo only: the baseline has no difference with itself
    assert list(mean[0].get_ydata()) == [0.0, 0.75, 1.5]  # means of (0, 0), (0.5, 1), (1, 2)
    assert len(comparison_figure(curves, "t").axes) == 3  # no baseline: no paired panel


def read_scalars(folder):
    """(tag, step, value) of every scalar in TFRecord event files (length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out.append((value.tag, event.step, value.simple_value))
    return out


def test_tensorboard_event_files_beside_metrics(tmp_path):
    pytest.importorskip("tensorboardX")  # fedft[tensorboard]; in the dev extra
    recorder = RunRecorder(tmp_path, {"eval": {"tensorboard": True}}, 2)
    recorder.round(0, {"eval_loss": 3.0, "rouge_l": 0.1, "exact_match": 0.0})
    recorder.client(1, 7, {"examples": 4, "train_loss": 2.5, "bytes_up": 10})
    recorder.round(1, {"eval_loss": 2.0, "rouge_l": 0.25, "exact_match": 0.5})
    recorder.finish()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert ("round/eval_loss", 0, 3.0) in scalars and ("round/eval_loss", 1, 2.0) in scalars
    assert ("round/rouge_l", 1, 0.25) in scalars and ("round/train_loss", 1, 2.5) in scalars
    assert ("round/bytes_up", 1, 10.0) in scalars
    assert not any(tag == "round/kind" for tag, _, _ in scalars)
