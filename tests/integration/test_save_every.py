"""A real 2-round simulation with run.save_every = 1 and the cosine schedule (issue 12, item 11)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM

from fedft.adapters import get_factors
from fedft.config import load_scenario
from fedft.schedule import round_lr

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("save_every") / "run"
    overrides = [
        "federation.num_rounds=2",
        "federation.num_clients=2",
        "partition.method='iid'",
        "train.local_steps=5",
        "run.save_every=1",
        "train.lr_schedule='cosine'",
        "train.lr_min=1e-4",
    ]
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def load(run_dir, folder):
    base = AutoModelForCausalLM.from_pretrained(run_dir / "base_model")
    return get_factors(PeftModel.from_pretrained(base, run_dir / folder))


def test_an_adapter_for_every_round_loads(run_dir):
    first, second = load(run_dir, "adapters/round-1"), load(run_dir, "adapters/round-2")
    final = load(run_dir, "adapter")
    assert all(torch.equal(second[k], final[k]) for k in final)
    assert not all(torch.equal(first[k], second[k]) for k in final)
    for r in (1, 2):
        folder = run_dir / "adapters" / f"round-{r}"
        assert f"round {r} of 2" in (folder / "README.md").read_text()
        assert (folder / "tokenizer.json").is_file()
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "base_model"


def test_round_adapter_loads_with_auto_peft_from_the_run_folder(run_dir, monkeypatch):
    monkeypatch.chdir(run_dir)
    model = AutoPeftModelForCausalLM.from_pretrained("adapters/round-1")
    got = get_factors(model)
    assert all(torch.equal(got[k], v) for k, v in load(run_dir, "adapters/round-1").items())


def test_clients_trained_with_the_cosine_rate_of_each_round(run_dir):
    scenario = load_scenario(run_dir / "config.toml")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    clients = [r for r in rows if r["kind"] == "client"]
    assert len(clients) == 4
    for row in clients:
        assert row["lr"] == pytest.approx(round_lr(scenario.train, row["round"], 2), rel=1e-12)
    assert clients[-1]["lr"] == pytest.approx(1e-4)  # the last round trains at lr_min
