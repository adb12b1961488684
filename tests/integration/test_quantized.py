"""A real Flower simulation mixing nf4, int8 and float32 bases (and ort devices), via the CLI."""

import json
import re

import pytest

pytestmark = pytest.mark.integration
NUM_CLIENTS = 5  # the default scenario's natural split: one client per operation
NF4, INT8, FP32 = 2, 3, 4  # partitions, as tests/integration/conftest.py's mixed_run has them


@pytest.fixture(scope="module")
def run(mixed_run):  # ort, nf4, int8 and float32 clients in one federation
    return mixed_run.out, mixed_run.stderr


def rows(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_every_client_reply_was_accepted_in_every_round(run):
    run_dir, log = run
    assert "round 2/2" in log
    assert not re.search(r"round \d+: (node \d+ failed|dropped reply)", log), log[-4000:]
    rounds = rows(run_dir, "round")
    assert [r["clients"] for r in rounds[1:]] == [NUM_CLIENTS, NUM_CLIENTS]
    clients = rows(run_dir, "client")
    nodes = {r: {c["node"] for c in clients if c["round"] == r} for r in (1, 2)}
    assert len(nodes[1]) == NUM_CLIENTS and nodes[1] == nodes[2]
    assert len(clients) == 2 * NUM_CLIENTS


def test_the_federation_mixed_nf4_int8_and_float32_bases(run):
    run_dir, _ = run
    for server_round in (1, 2):
        round_rows = [c for c in rows(run_dir, "client") if c["round"] == server_round]
        clients = {int(c["partition"]): c for c in round_rows}
        nf4, int8, fp32 = (clients[p]["base_bytes"] for p in (NF4, INT8, FP32))
        assert nf4 <= 0.3 * fp32 and nf4 < int8 <= 0.4 * fp32
        # the server cannot tell them apart: the same bytes up (names, shapes, float32)
        assert len({c["bytes_up"] for c in clients.values()}) == 1


def test_global_eval_loss_fell(run):
    run_dir, _ = run
    rounds = rows(run_dir, "round")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"] - 1.0  # measured: 6.2 -> 1.5
