"""Real Flower simulations of Ferret: a ferret run with catch-up, Ferret clients in mixed rounds."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
COMMON = ["train.local_steps=10", "ferret.pool_size=32", "ferret.server_lr=0.5"]
FEDIT_UPDATE_BYTES = 17_696 * 4  # the default scenario's LoRA factors, fp32: a fedit reply's size


def simulate(out, *overrides):
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    for o in [*COMMON, *overrides]:
        args += ["--set", o]
    proc = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "dropped reply" not in proc.stderr, proc.stderr[-3000:]
    assert not re.search(r"node \d+ failed", proc.stderr), proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "round"], [r for r in rows if r["kind"] == "client"]


def test_ferret_run_learns_with_kilobytes_and_nodes_catch_up_exactly(tmp_path):
    # 3 of 5 clients a round: nodes miss rounds and apply the missed aggregates when sampled again.
    rounds, clients = simulate(
        tmp_path / "ferret",
        "federation.strategy='ferret'",
        "federation.num_rounds=3",
        "federation.fraction_train=0.6",
        "federation.min_train_clients=3",
    )
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    losses = [r["eval_loss"] for r in rounds]
    assert losses[3] < losses[2] < losses[0] - 1.0
    assert len(clients) == 9
    for c in clients:
        assert c["ferret_synced_exact"] == 1.0  # the node's copy equals the server's global state
        assert c["bytes_up"] < FEDIT_UPDATE_BYTES / 50  # < 2 % of a fedit reply
        assert c["bytes_up"] <= c["coords"] + 30 * 5 + 64  # a byte a coordinate, scales, header
    partitions = {r: {c["partition"] for c in clients if c["round"] == r} for r in (1, 2, 3)}
    returning = [
        c for c in clients if c["round"] == 3 and c["partition"] in partitions[1] - partitions[2]
    ]
    assert returning, partitions  # someone missed round 2 and caught up (replayed rounds 1-2)
    assert all(0 < c["bytes_down"] < FEDIT_UPDATE_BYTES for c in returning)


def test_ferret_clients_join_a_lora_fair_round(tmp_path):
    rounds, clients = simulate(
        tmp_path / "mixed",
        "federation.strategy='lora_fair'",
        "federation.num_rounds=2",
        "client_groups=[{partitions=[0, 1], backend='ferret'}]",
    )
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"] - 1.0
    ferret_rows = [c for c in clients if "coords" in c]
    first_order = [c for c in clients if "coords" not in c]
    assert len(ferret_rows) == 4 and len(first_order) == 6
    assert all(c["ferret_synced_exact"] == 1.0 for c in ferret_rows)
    assert max(c["bytes_up"] for c in ferret_rows) * 50 < min(c["bytes_up"] for c in first_order)


def test_ort_clients_in_a_ferret_run_hold_the_servers_bits(tmp_path):
    # partitions 0-2 train on ONNX Runtime and keep their view and projection in numpy
    rounds, clients = simulate(
        tmp_path / "ort",
        "federation.strategy='ferret'",
        "federation.num_rounds=3",
        "federation.fraction_train=0.6",
        "federation.min_train_clients=3",
        "client_groups=[{partitions=[0, 1, 2], backend='ort'}]",
    )
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"] - 1.0
    assert len(clients) == 9
    ort = [c for c in clients if c["partition"] in (0, 1, 2)]
    assert ort and all(c["ferret_numpy"] == 1.0 for c in ort)
    assert all(c["ferret_numpy"] == 0.0 for c in clients if c["partition"] > 2)
    # the numpy view (catch-up replay included) equals the server's torch state, every round
    assert all(c["ferret_synced_exact"] == 1.0 for c in clients)
    later = [c for c in ort if c["round"] > 1]
    assert later and all(
        c["bytes_down"] < FEDIT_UPDATE_BYTES for c in later
    )  # history, not factors


def test_a_full_parameter_ferret_run_writes_the_modules_weights(tmp_path):
    out = tmp_path / "modules"
    rounds, clients = simulate(
        out,
        "federation.strategy='ferret'",
        "federation.num_rounds=3",
        "federation.fraction_train=0.6",
        "federation.min_train_clients=3",
        "ferret.trainable_modules=['lm_head', 'down_proj']",
        "ferret.pool_size=200",  # 3 blocks of 6-8 k weights: more directions than for LoRA
    )
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"] - 0.2
    assert all(c["ferret_synced_exact"] == 1.0 for c in clients)
    numel = 100 * 64 + 2 * 64 * 128  # lm_head and the two down_proj weights
    assert all(c["bytes_up"] * 50 < 4 * numel for c in clients)
    weights = load_file(out / "ferret_weights.safetensors")
    assert sorted(weights) == [
        "lm_head.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ]
    assert not (out / "adapter").exists()


def test_nodes_get_the_factors_when_they_cost_fewer_bytes_than_the_missed_history(tmp_path):
    # rank 1 on k_proj: 192 factor weights (768 B); K = 1024 puts >= 1024 slots (>= 8 kB) in every
    # round's aggregate, so from round 2 on every sampled node is sent the factors instead (with
    # the config, and the scenario for a node's first round: ~1.6-4 kB in all)
    rounds, clients = simulate(
        tmp_path / "factors",
        "federation.strategy='ferret'",
        "federation.num_rounds=3",
        "federation.fraction_train=0.6",
        "federation.min_train_clients=3",
        "lora.target_modules=['k_proj']",
        "lora.rank=1",
        "ferret.pool_size=1024",
    )
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert all(c["ferret_synced_exact"] == 1.0 for c in clients)  # the node's copy == server's
    later = [c for c in clients if c["round"] > 1]
    assert len(later) == 6
    factor_bytes = 2 * (64 + 32) * 4
    assert all(factor_bytes <= c["bytes_down"] < 8 * 1024 for c in later), later  # no history
