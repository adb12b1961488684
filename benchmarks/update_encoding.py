"""Uplink bytes and final eval loss of the three reply encodings: ArrayRecord, fp32, int8.

Run from the repository root:  python benchmarks/update_encoding.py [--skip-runs]

1. Bytes one client sends per round (its whole LoRA factor state), for
   - the default scenario's adapter (built-in tiny model, rank 8 on every projection and lm_head),
   - SmolLM2-135M-shaped adapters (shapes only: hidden 576, 3 KV heads of 64, MLP 1536, 30
     layers), rank 8 on q_proj and v_proj (simulations/smollm2_chatterbot.toml) and on all seven
     projections,
   as a Flower ArrayRecord (``fp32_array``, the default), a ``fedft.v1.LoraUpdate`` in float32
   (``fp32``) and in int8 with one float32 scale per row (``int8``), with encode + decode time.
2. The default scenario run three times, same seed, once per ``federation.update_encoding``:
   ``python -m fedft.cli simulate simulations/default.toml --set federation.update_encoding=...``;
   uplink bytes per client-round and the global eval loss after each round, from metrics.jsonl.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedft.adapters import get_factors
from fedft.config import load_scenario
from fedft.flower_records import factors_to_record
from fedft.models import load_peft_model
from fedft.report import read_metrics
from fedft.wire.update import decode_update, encode_update

ROOT = Path(__file__).resolve().parents[1]
ENCODINGS = ("fp32_array", "fp32", "int8")
SMOLLM2 = {"hidden": 576, "kv": 3 * 64, "mlp": 1536, "layers": 30}


def smollm2_adapter(targets: tuple[str, ...], rank: int = 8) -> dict[str, torch.Tensor]:
    """LoRA factors shaped like a SmolLM2-135M adapter: A (r, in), B (out, r) per module."""
    h, kv, mlp = SMOLLM2["hidden"], SMOLLM2["kv"], SMOLLM2["mlp"]
    shapes = {
        "self_attn.q_proj": (h, h),
        "self_attn.k_proj": (h, kv),
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (h, h),
        "mlp.gate_proj": (h, mlp),
        "mlp.up_proj": (h, mlp),
        "mlp.down_proj": (mlp, h),
    }
    gen = torch.Generator().manual_seed(0)
    out = {}
    for layer in range(SMOLLM2["layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            if module.split(".")[1] not in targets:
                continue
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            out[f"{prefix}.lora_A.weight"] = (torch.rand(rank, fan_in, generator=gen) - 0.5) * 0.1
            out[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) * 1e-3
    return out


def payload_bytes(factors: dict[str, torch.Tensor], encoding: str) -> tuple[int, float]:
    """Bytes of one reply's payload and the best encode + decode time in ms (of 3)."""
    if encoding == "fp32_array":
        return factors_to_record(factors).count_bytes(), float("nan")
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        data = encode_update(factors, encoding)
        decode_update(data, template=factors)
        best = min(best, time.perf_counter() - started)
    return len(data), best * 1e3


def bytes_table() -> None:
    scenario = load_scenario(ROOT / "simulations/default.toml", [])
    model, _ = load_peft_model(scenario.model, scenario.lora, scenario.run.seed)
    adapters = {
        "tiny (default.toml)": get_factors(model),
        "SmolLM2-135M q,v r8": smollm2_adapter(("q_proj", "v_proj")),
        "SmolLM2-135M all r8": smollm2_adapter(
            ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        ),
    }
    print("1. bytes per client-round (one reply), encode+decode time")
    header = f"{'adapter':<22}{'values':>10}{'rows':>8}"
    header += "".join(f"{e:>14}" for e in ENCODINGS) + f"{'int8/fp32':>11}{'ms fp32/int8':>15}"
    print(header)
    for label, factors in adapters.items():
        values = sum(t.numel() for t in factors.values())
        rows = sum(t.shape[0] for t in factors.values())
        sizes = {e: payload_bytes(factors, e) for e in ENCODINGS}
        line = f"{label:<22}{values:>10,}{rows:>8,}"
        line += "".join(f"{sizes[e][0]:>14,}" for e in ENCODINGS)
        line += f"{sizes['int8'][0] / sizes['fp32'][0]:>11.3f}"
        line += f"{sizes['fp32'][1]:>8.1f}/{sizes['int8'][1]:.1f}"
        print(line)


def run_default(encoding: str, out_root: Path) -> list[dict]:
    out = out_root / encoding
    command = [
        sys.executable,
        "-m",
        "fedft.cli",
        "simulate",
        "simulations/default.toml",
        "--set",
        f"federation.update_encoding='{encoding}'",
        "--out",
        str(out),
    ]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    print(f"   ran {encoding} in {time.perf_counter() - started:.0f} s -> {out}")
    return read_metrics(out / "metrics.jsonl")


def runs_table(out_root: Path) -> None:
    print("\n2. default scenario (5 clients, 3 rounds, seed 0), one run per update_encoding")
    results = {e: run_default(e, out_root) for e in ENCODINGS}
    rounds = sorted({r["round"] for r in results["fp32"] if r["kind"] == "round"})
    header = f"{'encoding':<12}{'up B/client-round':>19}{'dropped':>9}"
    header += "".join(f"{'loss r' + str(r):>10}" for r in rounds)
    print(header)
    for encoding, rows in results.items():
        clients = [r["bytes_up"] for r in rows if r["kind"] == "client"]
        losses = {r["round"]: r["eval_loss"] for r in rows if r["kind"] == "round"}
        expected = 5 * (len(rounds) - 1)
        line = f"{encoding:<12}{statistics.mean(clients):>19,.0f}{expected - len(clients):>9}"
        line += "".join(f"{losses[r]:>10.4f}" for r in rounds)
        print(line)
    final = {
        e: [r for r in rows if r["kind"] == "round"][-1]["eval_loss"] for e, rows in results.items()
    }
    print(
        f"final eval loss: int8 - fp32 = {final['int8'] - final['fp32']:+.4f}, "
        f"fp32 - fp32_array = {final['fp32'] - final['fp32_array']:+.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-runs", action="store_true", help="print the bytes table only")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench_update_encoding")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bytes_table()
    if not args.skip_runs:
        runs_table(args.out)


if __name__ == "__main__":
    main()
