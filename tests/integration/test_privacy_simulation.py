"""[privacy] in real simulations: real replies within the clip, epsilon per round, budget, resume.

Each test runs the tiny default scenario with 3 clients (``fedft simulate``, real Flower
simulations). The noise is real but small next to what the tests check (bounds hold for any
noise: the clip is checked on the server's own measure of each reply, or on sums divided by
noise-free counts with the noise's standard deviation far below the tolerance).
"""

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from fedft.privacy.accountant import Release, epsilon_of
from fedft.privacy.zo import client_indices
from fedft.wire.zo_history import decode_history
from fedft.wire.zo_reply import encode_zo_reply
from fedft.zo.seeds import ZoRecord, seed_pool_id

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
COMMON = [
    "federation.num_clients=3",
    "partition.method='iid'",
    "train.local_steps=4",
]


def simulate(*overrides, out=None, resume=None):
    args = [sys.executable, "-m", "fedft.cli", "simulate"]
    if resume is not None:
        args += ["--resume", str(resume)]
    else:
        args += [str(ROOT / "simulations/default.toml"), "--out", str(out)]
        for o in COMMON + list(overrides):
            args += ["--set", o]
    return subprocess.run(args, capture_output=True, text=True, timeout=900)


def rows(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def checkpoint_meta(run_dir):
    with safe_open(str(run_dir / "checkpoint.safetensors"), framework="pt") as f:
        return f.metadata()


def test_fedit_central_clips_real_replies_stops_at_the_budget_and_resumes_it(tmp_path):
    run = tmp_path / "run"
    proc = simulate(
        "federation.num_rounds=3",
        "privacy.mode='central'",
        "privacy.clip_norm=0.5",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=7.5",  # 4.73 after round 1, 7.08 after 2, 9.0 after 3
        out=run,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "privacy: central DP, clip 0.5, noise multiplier 1" in proc.stderr
    assert "privacy budget privacy.target_epsilon = 7.5 exhausted: stopping before round 3" in (
        proc.stderr
    )
    spent = [r["privacy.epsilon"] for r in rows(run, "round") if r["round"] > 0]
    assert spent == pytest.approx([epsilon_of([Release(1.0)] * n, 1e-5) for n in (1, 2)])
    assert "epsilon 7.08" in proc.stderr  # the round line
    clients = rows(run, "client")
    assert len(clients) == 6
    # update_norm is the server's ||X_k - X|| of each real reply: the device clipped it
    assert max(c["update_norm"] for c in clients) <= 0.5 * (1 + 1e-5)
    assert checkpoint_meta(run)["round"] == "2"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()

    resumed = simulate(resume=run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the accountant continued: 7.08 spent, so round 3 would exceed the budget again
    assert "exhausted: stopping before round 3 (epsilon spent 7.077" in resumed.stderr
    assert len(rows(run, "round")) == 3


def test_zo_central_keeps_every_scalar_within_the_clip_and_adds_no_byte(tmp_path):
    run = tmp_path / "run"
    clip, steps = 2.0, 10
    proc = simulate(
        "federation.strategy='zo'",
        "federation.num_rounds=2",
        f"zo.local_steps={steps}",
        "privacy.mode='central'",
        f"privacy.clip_norm={clip}",
        "privacy.noise_multiplier=1e-6",
        out=run,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(checkpoint_meta(run)["strategy"])
    history = decode_history(base64.b64decode(state["history"]), 0, 1024)
    assert [h.round for h in history] == [1, 2]
    for entry in history:
        indices = client_indices(0, entry.round, 3, steps, 1024)
        uses = {}
        for client in indices:
            for s in client:
                uses[s] = uses.get(s, 0) + 1
        # a_s = (sum of the clipped g on seed s + noise of std 2e-6) / 3 clients
        for s, a in entry.aggregate.items():
            assert abs(a) <= clip * uses[s] / 3 + 1e-4
        assert set(entry.aggregate) <= set(uses)
    spent = [r["privacy.epsilon"] for r in rows(run, "round") if r["round"] > 0]
    assert spent[0] > 0 and spent[1] > spent[0]
    for c in rows(run, "client"):  # one byte a step and the header, as without privacy
        client = int(c["partition"])
        pid = seed_pool_id(0, c["round"], 1024)
        derived = client_indices(0, c["round"], 3, steps, 1024)[client]
        plain = encode_zo_reply(
            [ZoRecord(s, 0.0) for s in derived],
            pool_id=pid,
            round=c["round"],
            client=client,
            pool_size=1024,
            grad_scale=32.0 / 127,
        )
        assert c["bytes_up"] == len(plain)
