"""A simulation whose backend (Ray) cannot start ends at once with one error line.

Ray is pointed at a cluster that is not there (``RAY_ADDRESS``): given Flower's CPU count, it
refuses to start, as it fails under heavy load ("GCS overloaded", a timed-out raylet file). Before
the fix the server then waited ``federation.round_timeout_s`` (an hour) for clients that never
came.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_a_backend_that_cannot_start_fails_the_run_with_one_line(tmp_path):
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    args += ["--set", "federation.num_clients=2", "--set", "partition.method='iid'"]
    args += ["--set", "federation.num_rounds=1", "--out", str(tmp_path / "run")]
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # nothing listens on port 1
    # well below the hour of federation.round_timeout_s the server would otherwise wait
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[-1].startswith("fedft: error: the simulation backend (Ray) failed"), lines
    assert "num_cpus" in lines[-1]  # Ray's own reason, on the same line
    assert sum("error" in line.lower() for line in lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
