"""[privacy] in real simulations: real replies within the clip, epsilon per round, budget, resume.

Each test runs the tiny default scenario with 3 clients (``fedft simulate``, real Flower
simulations). The noise is real but small next to what the tests check (bounds hold for any
noise: the clip is checked on the server's own measure of each reply, or on sums divided by
noise-free counts with the noise's standard deviation far below the tolerance).
"""

import base64
import json
import math
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


def adapter_numel(run_dir):
    with safe_open(str(run_dir / "adapter" / "adapter_model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def test_fedit_local_noises_on_the_device_and_spends_half_the_multiplier(tmp_path):
    run = tmp_path / "run"
    clip, sigma = 0.5, 0.01
    proc = simulate(
        "federation.num_rounds=2",
        "privacy.mode='local'",
        f"privacy.clip_norm={clip}",
        f"privacy.noise_multiplier={sigma}",
        out=run,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "privacy: local DP, clip 0.5, noise multiplier 0.01" in proc.stderr
    spent = [r["privacy.epsilon"] for r in rows(run, "round") if r["round"] > 0]
    # local: each reply is released on its own, sensitivity 2C: N(sigma / 2) per round
    assert spent == pytest.approx([epsilon_of([Release(sigma / 2)] * n, 1e-5) for n in (1, 2)])
    d = adapter_numel(run)
    # the server's ||X_k - X|| of each real reply is ||clip_C(Delta) + N(0, (sigma C)^2 I)||:
    # the device clipped (the raw update is over C, see the central test) and then noised it,
    # so it concentrates at sqrt(C^2 + d (sigma C)^2) (relative spread ~1 / sqrt(2 d) < 1 %)
    expected = (clip**2 + d * (sigma * clip) ** 2) ** 0.5
    clients = rows(run, "client")
    assert len(clients) == 6
    for c in clients:
        assert c["update_norm"] == pytest.approx(expected, rel=0.05), c["update_norm"]


def test_ferret_central_bounds_and_noises_the_coordinates_of_real_replies(tmp_path):
    run = tmp_path / "run"
    proc = simulate(
        "federation.strategy='ferret'",
        "federation.num_rounds=2",
        "ferret.coord_encoding='fp32'",
        "privacy.mode='central'",
        "privacy.clip_norm=0.5",
        "privacy.noise_multiplier=1.0",
        out=run,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "privacy: central DP, clip 0.5, noise multiplier 1" in proc.stderr
    assert "clipped by the server" not in proc.stderr  # the devices bounded what they sent
    spent = [r["privacy.epsilon"] for r in rows(run, "round") if r["round"] > 0]
    assert spent == pytest.approx([epsilon_of([Release(1.0)] * n, 1e-5) for n in (1, 2)])
    state = json.loads(checkpoint_meta(run)["strategy"])
    slots = state["num_blocks"] * 64  # ferret.pool_size: every slot of every block is noised
    for r in rows(run, "round"):
        if r["round"] > 0:
            assert r["ferret.slots"] == slots
    # n_b = K for every block: a reply's size reveals no norm. fp32 coordinates are 4 bytes each,
    # so one coordinate more or less would show; the header's client index (a varint, omitted
    # for client 0) accounts for up to 2 bytes
    sizes = [c["bytes_up"] for c in rows(run, "client")]
    assert max(sizes) - min(sizes) <= 2, sizes
