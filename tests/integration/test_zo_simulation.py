"""Real Flower simulations of the zeroth-order path: pure zo runs and mixed rounds."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
COMMON = [
    "federation.num_clients=3",
    "partition.method='iid'",
    "train.local_steps=10",
    "zo.local_steps=20",
]


def simulate(out, *overrides):
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    for o in [*COMMON, *overrides]:
        args += ["--set", o]
    proc = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "dropped reply" not in proc.stderr, proc.stderr[-3000:]
    assert not re.search(r"node \d+ failed", proc.stderr), proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "round"], [r for r in rows if r["kind"] == "client"]


def test_pure_zo_run_sends_bytes_per_step_and_clients_catch_up(tmp_path):
    # 2 of 3 clients a round for 3 rounds: some node misses a round and replays the history.
    # Partition 0 is an ONNX Runtime device stepping forward-only: the server cannot tell.
    rounds, clients = simulate(
        tmp_path / "zo",
        "federation.strategy='zo'",
        "client_groups=[{partitions=[0], backend='ort'}]",
        "federation.num_rounds=3",
        "federation.fraction_train=0.67",
        "federation.min_train_clients=2",
    )
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
    assert len(clients) == 6
    for c in clients:
        assert c["bytes_up"] <= 20 + 64  # one byte per step plus a header of at most 64 bytes
        assert c["zo_synced_exact"] == 1.0  # the client's copy equals the server's global state
    later = [c for c in clients if c["round"] > 1]
    # a catch-up costs the missed rounds' aggregates, far less than the factors
    assert all(0 < c["bytes_down"] < 20_000 for c in later)


def test_mixed_round_rebuilds_zo_clients_factors_exactly(tmp_path):
    rounds, clients = simulate(
        tmp_path / "mixed",
        "federation.strategy='lora_fair'",
        "federation.num_rounds=2",
        "client_groups=[{partitions=[0], backend='zo'}]",
    )
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
    zo_rows = [c for c in clients if "zo_rebuild_exact" in c]
    first_order = [c for c in clients if "zo_rebuild_exact" not in c]
    assert len(zo_rows) == 2 and len(first_order) == 4
    assert all(c["zo_rebuild_exact"] == 1.0 for c in zo_rows)  # server's rebuild == client's bits
    assert max(c["bytes_up"] for c in zo_rows) * 100 < min(c["bytes_up"] for c in first_order)


def test_a_zo_simulation_repeats_exactly_with_the_same_seed(tmp_path):
    # Flower gives nodes random ids in every simulation; the seeds a client steps along derive from
    # its index in the scenario instead, so two runs (all clients every round) match bit for bit.
    runs = [
        simulate(tmp_path / f"zo{k}", "federation.strategy='zo'", "federation.num_rounds=2")
        for k in range(2)
    ]
    (rounds_a, clients_a), (rounds_b, clients_b) = runs
    assert [r["eval_loss"] for r in rounds_a] == [r["eval_loss"] for r in rounds_b]
    assert rounds_a[-1]["eval_loss"] != rounds_a[0]["eval_loss"]
    by_partition = [
        sorted((c["round"], c["partition"], c["end_digest"]) for c in clients)
        for clients in (clients_a, clients_b)
    ]
    assert by_partition[0] == by_partition[1] and len(by_partition[0]) == 6
    adapters = [(tmp_path / f"zo{k}" / "adapter" / "adapter_model.safetensors") for k in range(2)]
    assert adapters[0].read_bytes() == adapters[1].read_bytes()


ADAPTIVE = [
    "zo.grad_scale_rule='adaptive'",
    "zo.perturbations=2",
    "zo.local_steps=10",
    "zo.grad_rounding='stochastic'",
]


def test_adaptive_scale_and_two_directions_a_step_stay_exact_with_catch_up_and_ort(tmp_path):
    # Round 1 calibrates (float32 g), rounds 2-3 send int8 at the scale the server announced,
    # rounded stochastically; two directions a step (2 x 2 forward passes, 2 bytes); partition 0
    # an ONNX Runtime device.
    rounds, clients = simulate(
        tmp_path / "zo",
        "federation.strategy='zo'",
        "client_groups=[{partitions=[0], backend='ort'}]",
        "federation.num_rounds=3",
        "federation.fraction_train=0.67",
        "federation.min_train_clients=2",
        *ADAPTIVE,
    )
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
    assert rounds[1]["zo.int8_scale"] == 0.0
    scales = [r["zo.int8_scale"] for r in rounds[2:]]
    assert all(0 < s <= 32 / 127 for s in scales)
    assert len(clients) == 6 and {c["steps"] for c in clients} == {20.0}
    for c in clients:
        assert c["zo_synced_exact"] == 1.0
        per_record = 4 if c["round"] == 1 else 1
        assert 20 * per_record < c["bytes_up"] <= 20 * per_record + 64
    assert any(c["partition"] == 0 for c in clients if c["round"] > 1)  # ort, at the new scale


def test_adaptive_scale_and_two_directions_rebuild_exactly_in_mixed_rounds(tmp_path):
    rounds, clients = simulate(
        tmp_path / "mixed",
        "federation.strategy='fedit'",
        "federation.num_rounds=2",
        "client_groups=[{partitions=[0], backend='zo'}, {partitions=[1], backend='ort'}]",
        *ADAPTIVE,
    )
    assert rounds[1]["zo.int8_scale"] == 0.0 < rounds[2]["zo.int8_scale"]
    zo_rows = [c for c in clients if "zo_rebuild_exact" in c]
    assert len(zo_rows) == 2 and all(c["zo_rebuild_exact"] == 1.0 for c in zo_rows)
    assert [c["bytes_up"] <= 20 + 64 for c in zo_rows if c["round"] == 2] == [True]


def test_sensitive_sparse_zo_is_exact_with_catch_up_an_nf4_and_an_ort_client(tmp_path):
    # 1 % of the tiny model's block linears (737 values), chosen on public text; partition 0
    # steps over an nf4 base, partition 1 on ONNX Runtime (the deltas written into the masked
    # weights it feeds the graph). Each node gets the mask once (4 bytes an index) and its digest
    # every round; a node that misses a round catches up by replay over the mask's deltas.
    out = tmp_path / "sparse"
    rounds, clients = simulate(
        out,
        "federation.strategy='zo'",
        "zo.sparse_fraction=0.01",
        "zo.sparse_calibration_batches=2",
        "zo.lr=0.01",
        "client_groups=[{partitions=[0], quantization='nf4'}, {partitions=[1], backend='ort'}]",
        "federation.num_rounds=3",
        "federation.fraction_train=0.67",
        "federation.min_train_clients=2",
    )
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
    assert len(clients) == 6
    mask_bytes = (out / "zo_mask.bin").stat().st_size
    assert 4 * 737 < mask_bytes < 4 * 737 + 100 * 14
    first_round_of = {}
    for c in sorted(clients, key=lambda c: c["round"]):
        assert c["zo_synced_exact"] == 1.0  # the node's deltas equal the server's, bit for bit
        assert c["bytes_up"] <= 20 + 64
        first_round_of.setdefault(c["partition"], c["round"])
        if first_round_of[c["partition"]] == c["round"]:
            assert c["bytes_down"] > mask_bytes  # the mask, sent with the scenario
        else:
            assert c["bytes_down"] < mask_bytes  # its digest only, and the missed aggregates
    assert {0, 1} <= {c["partition"] for c in clients}
    assert (out / "zo_sparse.safetensors").exists() and not (out / "adapter").exists()
