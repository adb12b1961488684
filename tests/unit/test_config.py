import subprocess
import sys
from pathlib import Path

import pytest

from fedft.config import Scenario, apply_overrides, load_scenario, parse_override
from fedft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "simulations").glob("*.toml"))


def test_defaults_build():
    s = Scenario()
    assert s.lora.rank == 8
    assert Scenario.from_dict(s.to_dict()) == s  # round trip through plain dicts


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_every_scenario_file_loads_and_validates(path):
    text = path.read_text()
    assert text.startswith("#"), f"{path.name} needs a header comment (purpose, command, numbers)"
    assert "Command:" in text and "Purpose:" in text
    scenario = load_scenario(path)
    assert scenario.federation.num_rounds > 0


def test_overrides_parse_toml_values_and_fall_back_to_strings():
    assert parse_override("train.lr=1e-3") == (["train", "lr"], 1e-3)
    assert parse_override("lora.target_modules=['q_proj']") == (
        ["lora", "target_modules"],
        ["q_proj"],
    )
    assert parse_override("model.path=/tmp/x y") == (["model", "path"], "/tmp/x y")
    merged = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=2", "run.name=x"])
    assert merged == {"train": {"lr": 2}, "run": {"name": "x"}}


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.lrr=1"], "train.lrr"),
        (["bogus.x=1"], "bogus"),
        (["train.lr='fast'"], "train.lr"),
        (["train.local_steps=1.5"], "train.local_steps"),
        (["lora.rank=0"], "lora.rank"),
        (["lora.alpha=0"], "lora.alpha"),
        (["lora.alpha=-1"], "lora.alpha"),
        (["lora.target_modules=[1]"], "lora.target_modules[0]"),
        (["partition.method='random'"], "partition.method"),
        (["federation.strategy='nope'"], "federation.strategy"),
        (["federation.min_train_clients=9"], "federation.min_train_clients"),
        (["model.source='hf'"], "model.path"),
        (["data.chat=1"], "data.chat"),
        (["train=3"], "train"),
        (["noequals"], "noequals"),
        (["federation.num_clients=5000"], "federation.num_clients"),  # 1200 examples, 128 held out
        (["data.max_examples=10", "federation.num_clients=9"], "federation.num_clients"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_scenario(None, overrides)
    assert err.value.key == key
    assert f"`{key}`" in str(err.value)


def test_a_builtin_task_takes_as_many_clients_as_examples_it_does_not_hold_out():
    # 10 examples keep 2 for the global eval set: 8 clients fit (the check is split_clients')
    scenario = load_scenario(None, ["data.max_examples=10", "federation.num_clients=8"])
    assert scenario.data.known_count == 10 and scenario.data.global_eval_count(10) == 2
    assert load_scenario(None, ["data.source='csv'", "data.path='x.csv'"]).data.known_count is None


def test_missing_scenario_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(bad)


def _cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "fedft.cli", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["simulate", "--set", "lora.rank=0"], "`lora.rank`"),
        (["simulate", "--set", "train.unknown=1"], "`train.unknown`"),
        (
            ["simulate", "--set", "data.source='jsonl'", "--set", "data.path='/no/such.jsonl'"],
            "`data.path`",
        ),
        (
            ["simulate", "--set", "federation.num_clients=5000", "--set", "partition.method='iid'"],
            "`federation.num_clients`",
        ),
        (["simulate", "/no/such/scenario.toml"], "`scenario`"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(args, needle, tmp_path):
    proc = _cli(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedft: error:"), proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written
