"""Real simulations that several integration modules read: each runs once a test session."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.integration.sims import FEDIT_RUN, command

ROOT = Path(__file__).resolve().parents[2]
# partitions 0, 1: ONNX Runtime devices; 2: an nf4 base; 3: an int8 base; 4: float32 torch
MIXED_GROUPS = (
    "client_groups=[{partitions=[0,1], backend='ort'}, {partitions=[2], quantization='nf4'},"
    " {partitions=[3], quantization='int8'}]"
)


class MixedRun(NamedTuple):
    out: Path  # the run folder
    cache: Path  # $FEDFT_CACHE of the run: where its ort clients built their bundle
    stderr: str
    rows: list[dict]  # metrics.jsonl


@pytest.fixture(scope="session")
def mixed_run(tmp_path_factory):
    """The default scenario for 2 rounds with every kind of client (test_mixed_ort, test_quantized).

    Partitions 0 and 1 train on ONNX Runtime, 2 on an nf4 base, 3 on an int8 base, 4 in float32
    torch; the ort clients build their edge bundle in the run's own cache folder.
    """
    base = tmp_path_factory.mktemp("mixed")
    out, cache = base / "run", base / "cache"
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    args += ["--set", "federation.num_rounds=2", "--set", MIXED_GROUPS, "--out", str(out)]
    env = {**os.environ, "FEDFT_CACHE": str(cache)}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return MixedRun(out, cache, proc.stderr, rows)


@pytest.fixture(scope="session")
def fedit_run(tmp_path_factory):
    """The run folder of ``tests.integration.sims.FEDIT_RUN`` (test_simulation and
    test_generation_metrics); ``console.txt`` beside it holds what the command printed.
    """
    out = tmp_path_factory.mktemp("fedit") / "run"
    proc = subprocess.run(
        command(FEDIT_RUN, "--out", str(out)), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (out.parent / "console.txt").write_text(proc.stdout + proc.stderr)
    return out
