"""A real simulation of the built-in instruction task records greedy-answer metrics per round."""

import json

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run_dir(fedit_run):  # tests/integration/sims.py FEDIT_RUN: 3 rounds, eval.generate_every = 2
    return fedit_run


def rows(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_global_generation_metrics_in_generation_rounds(run_dir):
    rounds = rows(run_dir, "round")
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    scored = [r["round"] for r in rounds if "rouge_l" in r]
    assert scored == [0, 2, 3]
    for r in rounds:
        assert 0 <= r["token_accuracy"] <= 1 and r["eval_loss"] > 0
        if "rouge_l" in r:
            assert r["gen_examples"] == 10
            assert 0 <= r["exact_match"] <= 1 and 0 <= r["rouge_l"] <= 1


def test_clients_score_their_own_split(run_dir):
    clients = rows(run_dir, "client")
    assert clients and all("local_eval_loss" in c for c in clients)
    generated = {c["round"] for c in clients if "local_rouge_l" in c}
    assert generated == {2, 3}
    assert all(c["local_gen_examples"] <= 4 for c in clients if "local_rouge_l" in c)
    by_round = {r["round"]: r for r in rows(run_dir, "round")}
    assert "local_rouge_l" in by_round[2] and "local_rouge_l" not in by_round[1]


def test_round_line_plot_and_event_files(run_dir):
    console = (run_dir.parent / "console.txt").read_text()
    assert "round 2/3 |" in console and "ROUGE-L" in console
    assert (run_dir / "metrics.png").stat().st_size > 1000
    events = list((run_dir / "tensorboard").iterdir())
    assert events and events[0].name.startswith("events.out.tfevents")
