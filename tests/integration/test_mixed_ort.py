"""A real Flower simulation mixing ONNX Runtime (ort) and torch clients in one federation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedft.config import load_scenario
from fedft.edge.bundle import bundle_config, bundle_key, read_bundle

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
ORT_PARTITIONS = (0, 1)
GROUPS = "client_groups=[{partitions=[0,1], backend='ort'}]"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("mixed")
    out, cache = base / "run", base / "cache"
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    args += ["--set", "federation.num_rounds=2", "--set", GROUPS, "--out", str(out)]
    env = {**os.environ, "FEDFT_CACHE": str(cache)}  # the ort clients build their bundle here
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, cache, proc.stderr, rows


def test_every_reply_accepted_each_round(run):
    out, _, stderr, rows = run
    assert "dropped reply" not in stderr, stderr[-3000:]
    scenario = load_scenario(out / "config.toml")
    assert scenario.client_for(0).backend == "ort" and scenario.client_for(2).backend == "torch"
    rounds = [r for r in rows if r["kind"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["clients"] == 5 for r in rounds[1:])
    clients = [r for r in rows if r["kind"] == "client"]
    for server_round in (1, 2):
        replies = {int(c["partition"]): c for c in clients if c["round"] == server_round}
        assert sorted(replies) == [0, 1, 2, 3, 4]
        for pid, reply in replies.items():
            assert reply["steps"] == 20 and reply["train_loss"] > 0, pid
            config_bytes = reply["bytes_down"] - reply["bytes_up"]  # factors: same as sent
            assert (config_bytes > 1000) if server_round == 1 else (0 < config_bytes < 100), pid


def test_global_eval_loss_fell(run):
    rounds = [r for r in run[3] if r["kind"] == "round"]
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"] - 0.5


def test_ort_clients_trained_on_their_bundle(run):
    out, cache, _, rows = run
    scenario = load_scenario(out / "config.toml")
    folders = list((cache / "edge").iterdir())
    folders = [f for f in folders if f.is_dir() and not f.name.startswith(".")]
    assert len(folders) == 1  # built once, though two client processes needed it
    bundle = read_bundle(folders[0])
    assert bundle.key == bundle_key(bundle_config(scenario))
    ort_rows = [r for r in rows if r["kind"] == "client" and r["partition"] in ORT_PARTITIONS]
    assert len(ort_rows) == 4 and all("local_eval_loss" in r for r in ort_rows)
