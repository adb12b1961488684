"""Fingerprint four short real simulations, to show a refactor changes no bit of what they produce.

Purpose: a behaviour-preserving change (a re-layout, a codec moved, a strategy thinned) must leave
         the trained adapter and every round's eval loss exactly as they were. Run this on the
         commit before the change and on the commit after, and compare the two outputs: they must
         be equal, byte for byte.
Command: PYTHONPATH=$PWD python benchmarks/bit_identical.py > before.json   (then after.json;
         `diff before.json after.json` prints nothing when nothing changed)
Numbers: simulations/default.toml (tiny model, seed 0) with 3 clients, 2 rounds and 10 local
         steps: enough for every path to aggregate twice, short enough for a few minutes on 2
         cores. The runs:

         - ``fedit``: plain FedAvg of the factors (ArrayRecord replies);
         - ``lora_fair``: the residual correction on top of the same replies;
         - ``zo``: the shared-seed path, partition 0 an ONNX Runtime device (numpy SPSA steps),
           the others torch (history catch-up, replay, int8 ``g`` at the fixed scale);
         - ``mixed``: fedit with an ``ort`` group (partition 0), an ``int8`` quantized base
           (partition 1) and a ``zo`` client (partition 2, rebuilt by the server), every
           first-order reply a ``fedft.v1.LoraUpdate`` with int8 rows;
         - ``mixed_torch``: ``mixed`` without the ``ort`` group. ONNX Runtime training gives other
           bits from the same inputs on every run, so ``mixed`` differs between two runs of the
           same commit from its ``ort`` client on (its ``client_train_loss`` shows where); this
           variant is the mixed check that must be equal.

Output: one JSON object, per run the sha256 of the run's ``adapter/adapter_model.safetensors`` (or
``zo_weights.safetensors``), the ``eval_loss`` of every round in ``metrics.jsonl`` and each
client's ``train_loss`` by ``round/partition`` (as ``repr`` of the float, so no digit is lost).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "federation.num_clients=3",
    "federation.num_rounds=2",
    "partition.method='iid'",
    "train.local_steps=10",
    "zo.local_steps=20",
]
RUNS = {
    "fedit": ["federation.strategy='fedit'"],
    "lora_fair": ["federation.strategy='lora_fair'"],
    "zo": ["federation.strategy='zo'", "client_groups=[{partitions=[0], backend='ort'}]"],
    "mixed": [
        "federation.strategy='fedit'",
        "federation.update_encoding='int8'",
        "client_groups=[{partitions=[0], backend='ort'}, {partitions=[1], quantization='int8'},"
        " {partitions=[2], backend='zo'}]",
    ],
    # mixed without the ort client: ONNX Runtime training is not bit-reproducible from run to run
    # (the same round from the same factors gives other bits), so only this variant can be equal.
    "mixed_torch": [
        "federation.strategy='fedit'",
        "federation.update_encoding='int8'",
        "client_groups=[{partitions=[1], quantization='int8'}, {partitions=[2], backend='zo'}]",
    ],
}


def fingerprint(run_dir: Path) -> dict:
    """The sha256 of the run's trained weights and every round's eval loss."""
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    if not weights.exists():
        weights = run_dir / "zo_weights.safetensors"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {str(r["round"]): repr(r["eval_loss"]) for r in rows if r["kind"] == "round"}
    clients = {  # where two runs differ, these say which client did first
        f"{r['round']}/{int(r['partition'])}": repr(r["train_loss"])
        for r in rows
        if r["kind"] == "client"
    }
    return {
        "weights": weights.relative_to(run_dir).as_posix(),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "eval_loss": losses,
        "client_train_loss": dict(sorted(clients.items())),
    }


def simulate(name: str, out: Path, cache: Path) -> dict:
    """Run one scenario with ``fedft simulate`` and fingerprint its run folder."""
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    for override in COMMON + RUNS[name]:
        args += ["--set", override]
    env = {**os.environ, "FEDFT_CACHE": str(cache)}
    proc = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: fedft simulate failed\n{proc.stderr[-3000:]}")
    if "dropped reply" in proc.stderr:
        raise SystemExit(f"{name}: a reply was dropped\n{proc.stderr[-3000:]}")
    return fingerprint(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedft-bitcheck-") as tmp:
        result = {
            name: simulate(name, Path(tmp) / name, Path(tmp) / "cache")
            for name in args.runs.split(",")
        }
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
