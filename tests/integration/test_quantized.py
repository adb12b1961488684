"""A real Flower simulation mixing nf4, int8 and float32 clients, end to end through the CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
NUM_CLIENTS = 5  # the default scenario's natural split: one client per operation


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized") / "run"
    groups = "[{partitions=[0], quantization='nf4'},{partitions=[1], quantization='int8'}]"
    overrides = ["federation.num_rounds=2", f"client_groups={groups}"]
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc.stderr


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
        clients = [c for c in rows(run_dir, "client") if c["round"] == server_round]
        nf4, int8, *fp32 = sorted(c["base_bytes"] for c in clients)
        assert len(set(fp32)) == 1 and len(fp32) == NUM_CLIENTS - 2  # three float32 clients
        assert nf4 <= 0.3 * fp32[0] and nf4 < int8 <= 0.4 * fp32[0]
        # the server cannot tell them apart: the same bytes up (names, shapes, float32)
        assert len({c["bytes_up"] for c in clients}) == 1


def test_global_eval_loss_fell(run):
    run_dir, _ = run
    rounds = rows(run_dir, "round")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"] - 1.0  # measured: 6.2 -> 1.5
