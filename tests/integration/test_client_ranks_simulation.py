"""Real Flower simulations with two LoRA ranks: partitions 0 and 1 train rank 4, the server 8."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
COMMON = [
    "federation.num_clients=3",
    "federation.num_rounds=2",
    "partition.method='iid'",
    "train.local_steps=10",
    "lora.rank=8",
    "client_groups=[{partitions=[0, 1], lora_rank=4}]",
]


def simulate(out, *overrides):
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    for o in [*COMMON, *overrides]:
        args += ["--set", o]
    proc = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "dropped reply" not in proc.stderr, proc.stderr[-3000:]
    assert not re.search(r"node \d+ failed", proc.stderr), proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "round"], [r for r in rows if r["kind"] == "client"]


@pytest.mark.parametrize("strategy", ["flexlora", "ffa_lora", "flora"])  # lora_fair: unit tests
def test_two_ranks_train_and_the_adapter_has_the_servers_rank(tmp_path, strategy):
    rounds, clients = simulate(tmp_path / strategy, f"federation.strategy='{strategy}'")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"] - 0.5
    assert len(clients) == 6  # every reply accepted, both ranks
    small = [c for c in clients if c["partition"] in (0.0, 1.0)]
    big = [c for c in clients if c["partition"] == 2.0]
    # a rank-4 client is sent and sends half of the rank-8 factors (same modules, half the rank)
    assert max(c["bytes_up"] for c in small) < 0.6 * min(c["bytes_up"] for c in big)
    if strategy != "flora":  # flora also sends every client the merged factors (float64)
        assert max(c["bytes_down"] for c in small) < 0.6 * min(c["bytes_down"] for c in big)
    adapter = tmp_path / strategy / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    weights = load_file(adapter / "adapter_model.safetensors")
    assert all(t.shape[0 if ".lora_A." in n else 1] == 8 for n, t in weights.items())
    if strategy == "flexlora":
        assert all(0 < r["flexlora.kept_energy"] <= 1 for r in rounds[1:])
    if strategy == "flora":  # the merged update grows by the stacked ranks (4 + 4 + 8) a round
        first_rank, second_rank = (r["flora.merged_rank"] for r in rounds[1:])
        assert 8 < first_rank <= 16 and first_rank < second_rank <= 32  # (at most 32: k/v's d)
        second = [c["bytes_down"] for c in clients if c["round"] == 2]
        first = [c["bytes_down"] for c in clients if c["round"] == 1]
        assert min(second) > max(first)  # round 2 carries round 1's merged update
        assert 0 < rounds[-1]["flora.output_kept_energy"] < 1
