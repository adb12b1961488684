"""A Ferret simulation killed after a checkpoint and resumed ends exactly as an uninterrupted one.

The pattern of ``tests/integration/test_resume.py``, for the state a ferret run adds: the
aggregate history and each node's synced round (checkpointed), and nodes whose own copy of the
global factors died with the killed run (they catch up from the server's history or factors).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
OVERRIDES = [
    "federation.strategy='ferret'",
    "federation.num_rounds=3",
    "federation.num_clients=3",
    "federation.fraction_train=0.67",  # 2 of 3 a round: someone misses a round and catches up
    "federation.min_train_clients=2",
    "partition.method='iid'",
    "train.local_steps=8",
]


def command(*extra):
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    for o in OVERRIDES:
        args += ["--set", o]
    return args + list(extra)


def rows(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_killed_and_resumed_ferret_run_matches_an_uninterrupted_one(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    proc = subprocess.run(
        command("--out", str(whole)), capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    victim = subprocess.Popen(
        command("--out", str(broken)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and victim.poll() is None:
        if (broken / "checkpoint.safetensors").is_file() and len(rows(broken, "round")) >= 2:
            break  # round 1 completed and checkpointed
        time.sleep(0.2)
    assert victim.poll() is None, "the run finished before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    done = [r["round"] for r in rows(broken, "round")]
    assert 1 <= max(done) < 3

    resumed = subprocess.run(
        [sys.executable, "-m", "fedft.cli", "simulate", "--resume", str(broken)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dropped reply" not in resumed.stderr, resumed.stderr[-3000:]
    assert [r["round"] for r in rows(broken, "round")] == [0, 1, 2, 3]  # none lost or repeated
    for a, b in zip(rows(whole, "round"), rows(broken, "round"), strict=True):
        assert a["eval_loss"] == b["eval_loss"], (a["round"], a["eval_loss"], b["eval_loss"])
    # every node, in the resumed rounds too, held the server's global factors bit for bit
    clients = rows(broken, "client")
    assert {c["round"] for c in clients} == {1, 2, 3}
    assert all(c["ferret_synced_exact"] == 1.0 for c in clients), clients
    final_a = load_file(whole / "adapter" / "adapter_model.safetensors")
    final_b = load_file(broken / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
