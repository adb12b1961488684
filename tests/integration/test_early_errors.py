"""A bad scenario fails before any model or Ray start, and a model error before Ray starts.

Each case runs the command line in a fresh interpreter and then lists the heavy modules it had
imported: a config error must come before torch, transformers or Ray are even imported.
"""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # fresh interpreters, one per case

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import sys
from fedft.cli import main
code = main(sys.argv[1:])
heavy = [m for m in ("torch", "transformers", "ray", "flwr.simulation") if m in sys.modules]
print("imported:", ",".join(heavy))
sys.exit(code)
"""


def run_cli(*args, cwd=ROOT):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    imported = proc.stdout.split("imported:", 1)[1].strip().split(",")
    return proc, [m for m in imported if m]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["simulate", "--set", "train.lrr=1"], "train.lrr"),
        (["simulate", "--set", "federation.num_rounds='many'"], "federation.num_rounds"),
        (["simulate", "simulations/nope.toml"], "scenario"),
        (["simulate", "--set", "federation.num_clients=5000"], "federation.num_clients"),
        (["compare", "simulations/default.toml", "--set", "train.lrr=1"], "train.lrr"),
    ],
)
def test_config_errors_come_before_torch_transformers_and_ray(args, key):
    proc, imported = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert f"`{key}`" in proc.stderr and "Traceback" not in proc.stderr
    assert imported == []


def test_a_bad_out_fails_before_torch(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    proc, imported = run_cli("simulate", "--out", str(a_file / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "`--out`" in proc.stderr and imported == []


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["lora.target_modules=['q_proj', 'nope']"], "lora.target_modules"),
        (["model.source='hf'", "model.path='{empty}'"], "model.path"),
    ],
)
def test_model_errors_come_before_ray(tmp_path, overrides, key):
    args = ["simulate", "--out", str(tmp_path / "run")]
    for o in overrides:
        args += ["--set", o.format(empty=tmp_path)]
    proc, imported = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert f"`{key}`" in proc.stderr and "Traceback" not in proc.stderr
    assert "ray" not in imported and "flwr.simulation" not in imported
    assert not (tmp_path / "run").exists()
