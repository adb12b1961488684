"""A simulation killed after a checkpoint and resumed ends exactly as an uninterrupted one."""

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
    "federation.num_rounds=3",
    "federation.num_clients=3",
    "partition.method='iid'",
    "train.local_steps=8",
]


def command(*extra):
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    for o in OVERRIDES:
        args += ["--set", o]
    return args + list(extra)


def round_rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "round"]


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    proc = subprocess.run(command("--out", str(whole)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    victim = subprocess.Popen(
        command("--out", str(broken)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:
        if (broken / "checkpoint.safetensors").is_file() and len(round_rows(broken)) >= 2:
            break  # round 1 completed and checkpointed
        time.sleep(0.2)
    assert victim.poll() is None, "the run finished before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    done = [r["round"] for r in round_rows(broken)]
    assert 1 <= max(done) < 3

    resumed = subprocess.run(
        [sys.executable, "-m", "fedft.cli", "simulate", "--resume", str(broken)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["round"] for r in round_rows(broken)] == [0, 1, 2, 3]  # no round lost or repeated
    for a, b in zip(round_rows(whole), round_rows(broken), strict=True):
        assert a["eval_loss"] == b["eval_loss"], (a["round"], a["eval_loss"], b["eval_loss"])
    final_a = load_file(whole / "adapter" / "adapter_model.safetensors")
    final_b = load_file(broken / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_resume_refuses_another_scenario(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[lora]\nrank = 4\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedft.cli",
            "simulate",
            "simulations/default.toml",
            "--resume",
            str(run),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "lora.rank" in proc.stderr and "Traceback" not in proc.stderr
