"""`fedft compare` reuses a finished run of the same scenario and runs anything else again."""

import json

import tomli_w

from fedft import compare as compare_module
from fedft.compare import finished_rounds
from fedft.config import load_scenario
from fedft.run_folder import stored_config

OVERRIDES = ["federation.num_rounds=2", "federation.strategy='fedit'", "run.seed=0"]


def _write_run(run_dir, overrides=OVERRIDES, rounds=(0, 1, 2)):
    """A run folder as ``fedft simulate`` leaves it: config.toml, then a row per round."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = stored_config(load_scenario(None, overrides))
    (run_dir / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    rows = [{"kind": "round", "round": r, "eval_loss": 5.0 - r} for r in rounds]
    rows.insert(1, {"kind": "client", "round": 1, "node": 7, "train_loss": 4.0})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")


def test_a_finished_run_of_the_same_scenario_is_reused(tmp_path):
    _write_run(tmp_path / "run")
    rows = finished_rounds(None, OVERRIDES, tmp_path / "run")
    assert rows is not None
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["kind"] == "round" for r in rows)


def test_a_run_stopped_part_way_is_not_reused(tmp_path):
    _write_run(tmp_path / "run", rounds=(0, 1))
    assert finished_rounds(None, OVERRIDES, tmp_path / "run") is None


def test_a_changed_key_or_a_missing_folder_is_not_reused(tmp_path):
    _write_run(tmp_path / "run")
    assert finished_rounds(None, [*OVERRIDES, "train.lr=0.5"], tmp_path / "run") is None
    assert finished_rounds(None, OVERRIDES, tmp_path / "nothing") is None
    (tmp_path / "run" / "config.toml").write_text("not = [toml", encoding="utf-8")
    assert finished_rounds(None, OVERRIDES, tmp_path / "run") is None


def test_compare_runs_only_what_is_not_finished(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    base = ["federation.num_rounds=2"]
    _write_run(
        out / "fedit-seed0",
        [*base, "federation.strategy='fedit'", "run.seed=0", "run.name='fedit-seed0'"],
    )
    ran = []

    def fake_run_one(scenario, overrides, run_dir, label=""):
        ran.append(run_dir.name)
        _write_run(run_dir, list(overrides))
        return finished_rounds(scenario, overrides, run_dir)

    monkeypatch.setattr(compare_module, "run_one", fake_run_one)
    monkeypatch.setattr(compare_module, "plot_comparison", lambda *a, **k: None)
    text = compare_module.compare(None, ["fedit", "lora_fair"], [0], base, out)
    assert ran == ["lora_fair-seed0"]
    assert "lora_fair" in text and (out / "comparison.md").is_file()
