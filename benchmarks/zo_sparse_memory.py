"""Sensitive sparse zo over an nf4 base vs the float32 first-order client: peak RSS of a step.

Run from the repository root (not a test; one run measures every row, side by side):

    .venv/bin/python benchmarks/zo_sparse_memory.py            # tiny model, then SmolLM2-135M
    .venv/bin/python benchmarks/zo_sparse_memory.py --fraction 0.001 --steps 3

Rows, each in a fresh subprocess, measured as ``benchmarks/quantization.py`` measures (VmHWM
reset before the steps, ``malloc_trim`` after the load, one thread; see its docstring):

- ``first-order``: the float32 torch client's step (``fedft.train.train_local``: forward,
  backward, AdamW) on LoRA rank 8 over q/k/v/o, the reference of the ratios;
- ``zo lora``: one SPSA step (two forward passes, in place) on the same LoRA factors;
- ``zo sparse``: one SPSA step on a mask of ``--fraction`` of the block linears' weights,
  hooked on the base (:mod:`fedft.zo.sparse`), over a float32, int8 or nf4 base.

The mask here is drawn at random with the run's count (:func:`fedft.zo.sparse.random_mask`): its
memory is the count's (the deltas and index tensors), not which entries it holds, and drawing it
needs no float model in the worker (a sensitive mask is built once by the server, not a client).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantization import SMOLLM2, _status

ROOT = Path(__file__).resolve().parents[1]
# (label, quantization, trainer)
ROWS = [
    ("first-order", "none", "first_order"),
    ("zo lora", "none", "zo_lora"),
    ("zo lora", "nf4", "zo_lora"),
    ("zo sparse", "none", "zo_sparse"),
    ("zo sparse", "int8", "zo_sparse"),
    ("zo sparse", "nf4", "zo_sparse"),
]


def worker(model_name: str, quantization: str, trainer: str, steps: int, fraction: float) -> dict:
    """Load one configuration, take ``1 + steps`` steps, return what was measured."""
    import torch

    torch.set_num_threads(1)
    from fedft.config import LoraConfig, ModelConfig, TrainConfig
    from fedft.data import builtin_task, encode_examples
    from fedft.models import gguf_as_hf_folder, load_peft_model, resolve_gguf
    from fedft.quantize import base_weight_bytes
    from fedft.train import train_local
    from fedft.wire.order import zo_order
    from fedft.zo.config import BLOCK_LINEARS
    from fedft.zo.seeds import seed_pool
    from fedft.zo.sparse import install_, module_shapes, random_mask
    from fedft.zo.step import spsa_step_
    from fedft.zo.trainable import initial_state, trainable_params

    libc = ctypes.CDLL("libc.so.6")
    gc.collect()
    libc.malloc_trim(0)
    imports = _status()["VmRSS"]
    if model_name == "tiny":
        model_cfg = ModelConfig()
        batch_size, max_length = 8, 32
    else:
        folder = gguf_as_hf_folder(resolve_gguf(f"package:{SMOLLM2}"))
        model_cfg = ModelConfig(source="hf", path=str(folder))
        batch_size, max_length = 4, 32
    lora = LoraConfig(rank=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    model, tokenizer = load_peft_model(model_cfg, lora, 0, quantization, "cpu")
    data = encode_examples(builtin_task(64, seed=0), tokenizer, max_length)
    trainable = 0
    if trainer == "zo_sparse":
        mask = random_mask(module_shapes(model, BLOCK_LINEARS), fraction, 0)
        install_(model, mask)
        trainable = mask.numel
    gc.collect()
    libc.malloc_trim(0)
    loaded = _status()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    pool = seed_pool(0, 0, 64)
    cpu_times, losses = [], []
    model.eval()
    state = initial_state(model, ())
    params = trainable_params(model, zo_order(state), ())
    if trainer != "zo_sparse":
        trainable = sum(p.numel() for p in params)
    batches = list(data.batches(batch_size, seed=0, steps=1 + steps))
    for step, batch in enumerate(batches):
        cpu = time.process_time()
        if trainer == "first_order":
            cfg = TrainConfig(local_steps=1, batch_size=batch_size, lr=1e-3)
            losses.append(train_local(model, data, cfg, seed=step, device=torch.device("cpu")).loss)
        else:

            def loss_fn(batch: dict = batch) -> float:
                return float(model(**batch).loss)

            spsa_step_(params, loss_fn, pool[step], 1e-3, 1e-4)
            losses.append(loss_fn())
        cpu_times.append(time.process_time() - cpu)
    return {
        "base_bytes": base_weight_bytes(model),
        "trainable": trainable,
        "imports": imports,
        "loaded": loaded["VmRSS"],
        "step_peak": _status()["VmHWM"],
        "step_cpu_s": statistics.median(cpu_times[1:]),
    }


def run_row(model_name: str, quantization: str, trainer: str, steps: int, fraction: float) -> dict:
    """Measure one row in a fresh subprocess."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    env.setdefault("PYTHONWARNINGS", "ignore")
    args = [sys.executable, __file__, "--worker", model_name, quantization, trainer]
    proc = subprocess.run(
        [*args, "--steps", str(steps), "--fraction", str(fraction)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{model_name} {quantization} {trainer} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(model_name: str, steps: int, fraction: float) -> None:
    """Print one model's rows, ratios to the float32 first-order client."""
    mb = 1 / 2**20
    rows = [(label, q, run_row(model_name, q, t, steps, fraction)) for label, q, t in ROWS]
    ref = rows[0][2]
    ref_above = ref["step_peak"] - ref["imports"]
    print(f"\n## {model_name} (mask fraction {fraction}; x: ratio to first-order float32)\n")
    print(
        "| client | base | trainable values | base MiB | RSS loaded MiB | step peak MiB | x "
        "| step peak above imports MiB | x | step CPU ms |"
    )
    print("| --- | --- |" + " ---: |" * 8)
    for label, quantization, r in rows:
        above = r["step_peak"] - r["imports"]
        cells = [
            label,
            "float32" if quantization == "none" else quantization,
            f"{r['trainable']:,}",
            f"{r['base_bytes'] * mb:.1f}",
            f"{r['loaded'] * mb:.0f}",
            f"{r['step_peak'] * mb:.0f}",
            f"{r['step_peak'] / ref['step_peak']:.3f}",
            f"{above * mb:.0f}",
            f"{above / ref_above:.3f}",
            f"{r['step_cpu_s'] * 1e3:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--fraction", type=float, default=0.001, help="zo.sparse_fraction")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "QUANTIZATION", "TRAINER"))
    parser.add_argument("--only", choices=["tiny", "smollm2"], help="one model only")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.fraction)))
        return
    print("one thread per process; each row is a fresh subprocess")
    if args.only != "smollm2":
        table("tiny", args.steps, args.fraction)
    if args.only == "tiny":
        return
    try:
        importlib.metadata.distribution(SMOLLM2)
    except importlib.metadata.PackageNotFoundError:
        print(f"\nSmolLM2-135M skipped: package {SMOLLM2!r} is not installed (make smollm2).")
        return
    table("smollm2-135m", args.steps, args.fraction)


if __name__ == "__main__":
    main()
