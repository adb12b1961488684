"""ORT on-device LoRA training against torch + peft: steps/s, bundle size, peak memory.

Run from the repository root (not a test; prints measured ratios, side by side, in one run):

    .venv/bin/python benchmarks/ort_vs_torch.py                   # 64x2 (tiny), 256x4, 512x4
    .venv/bin/python benchmarks/ort_vs_torch.py --shapes 256x4 --threads 2

For each model shape (``width x layers`` of the built-in Llama-style model, LoRA rank 8 on every
linear layer and the head, as simulations/default.toml), both runtimes take the same AdamW steps
(clipping at 1.0) on the same random batch (batch x sequence tokens):

- torch: the torch client's loop (``fedft.train.train_local``'s step) on a peft model, float32;
- ort: :class:`fedft.edge.ort_train.OrtTrainer` on the shape's edge bundle (built first, once).

Each measurement runs in its own process (so its peak RSS is its own), the two runtimes alternate
(torch, ort, torch, ort: the machine is shared), and each keeps its best block of ``--steps`` steps.
"ORT setup" is what every round pays before its first step (checkpoint load, training and optimizer
sessions: a fresh AdamW state per round), and in brackets the first round of a process; torch
builds its optimizer in microseconds. "imports" is
the RSS after imports alone, in brackets (onnxruntime-training's ``import onnxruntime`` imports
torch too, so the ORT process carries torch's libraries without using them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def overrides(shape: str) -> list[str]:
    """Scenario overrides of a ``WIDTHxLAYERS`` shape (64x2 is the default tiny model)."""
    width, layers = (int(v) for v in shape.split("x"))
    if (width, layers) == (64, 2):
        return []
    heads = max(width // 32, 2)
    return [
        f"model.tiny.hidden_size={width}",
        f"model.tiny.num_layers={layers}",
        f"model.tiny.intermediate_size={2 * width}",
        f"model.tiny.num_heads={heads}",
        f"model.tiny.num_kv_heads={heads // 2}",
    ]


def rss_mb() -> float:
    """Peak RSS of this process so far (MiB).

    ``VmHWM``, which, unlike ``ru_maxrss``, does not inherit the peak of the parent that forked it.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def child(args: argparse.Namespace) -> None:
    """One runtime, one shape: time blocks of steps, print a JSON line."""
    import numpy as np

    from fedft.config import load_scenario

    scenario = load_scenario(ROOT / "simulations" / "default.toml", overrides(args.shape))
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 100, size=(args.batch, args.seq))
    labels = ids.copy()
    labels[:, : args.seq // 4] = -100  # a prompt part without loss, as fedft encodes
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}
    setup = [0.0, 0.0]
    if args.child == "torch":
        import torch

        from fedft.models import load_base, wrap_lora

        torch.set_num_threads(args.threads)
        imports_mb = rss_mb()
        model = wrap_lora(load_base(scenario.model, scenario.run.seed)[0], scenario.lora).train()
        params = [p for p in model.parameters() if p.requires_grad]
        lora_params = sum(p.numel() for p in params)
        base_params = sum(p.numel() for p in model.parameters()) - lora_params
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}

        def step() -> None:
            loss = model(**tensors).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

    else:
        import onnxruntime  # noqa: F401  (the training wheel's import pulls in torch's libraries)

        from fedft.edge.bundle import open_bundle
        from fedft.edge.ort_train import OrtTrainer

        imports_mb = rss_mb()
        bundle = open_bundle(args.bundle, scenario)
        factors = {n: np.zeros(s, np.float32) for n, s in bundle.factor_layout}
        for attempt in range(2):  # the first session in a process pays one-off initialisation
            started = time.perf_counter()
            trainer = OrtTrainer(bundle, factors, lr=1e-3, threads=args.threads)
            setup[attempt] = time.perf_counter() - started
        lora_params = sum(a.size for a in factors.values())
        base_params = int(bundle.manifest["base_bytes"]) // 4

        def step() -> None:
            trainer.step(batch)

    for _ in range(3):
        step()
    blocks = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        blocks.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "best_s": min(blocks),
                "setup_first_s": setup[0],
                "setup_s": setup[1],
                "peak_mb": rss_mb(),
                "imports_mb": imports_mb,
                "lora_params": int(lora_params),
                "base_params": int(base_params),
            }
        )
    )


def memory(runs: list[dict]) -> str:
    peak = max(r["peak_mb"] for r in runs)
    return f"{peak:.0f} ({max(r['imports_mb'] for r in runs):.0f})"


def run_child(runtime: str, shape: str, bundle: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", runtime, "--shape", shape, "--bundle", str(bundle)]
    for name in ("threads", "steps", "repeats", "batch", "seq"):
        cmd += [f"--{name}", str(getattr(args, name))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{runtime} {shape} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="64x2,256x4,512x4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per process")
    parser.add_argument("--rounds", type=int, default=2, help="alternations torch/ort per shape")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--child", choices=["torch", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from fedft.config import load_scenario
    from fedft.edge.export import build_bundle

    print(
        f"# ORT training vs torch + peft: batch {args.batch} x sequence {args.seq}, "
        f"{args.threads} thread(s), best of {args.rounds} x {args.repeats} blocks of "
        f"{args.steps} steps\n"
    )
    print(
        "| model | base params | LoRA params | torch steps/s | ORT steps/s | ORT / torch "
        "| ORT setup s/round (first) | bundle MB | torch peak RSS MB (imports) "
        "| ORT peak RSS MB (imports) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            scenario = load_scenario(ROOT / "simulations" / "default.toml", overrides(shape))
            bundle = build_bundle(scenario, Path(tmp) / shape)
            runs: dict[str, list[dict]] = {"torch": [], "ort": []}
            for _ in range(args.rounds):
                for runtime in ("torch", "ort"):
                    runs[runtime].append(run_child(runtime, shape, bundle.path, args))
            best = {k: min(v, key=lambda r: r["best_s"]) for k, v in runs.items()}
            torch_sps = args.steps / best["torch"]["best_s"]
            ort_sps = args.steps / best["ort"]["best_s"]
            setup = min(r["setup_s"] for r in runs["ort"])
            first = min(r["setup_first_s"] for r in runs["ort"])
            print(
                f"| {shape} | {best['torch']['base_params'] / 1e6:.2f}M "
                f"| {best['torch']['lora_params'] / 1e3:.1f}k | {torch_sps:.2f} | {ort_sps:.2f} "
                f"| {ort_sps / torch_sps:.2f}x | {setup:.2f} ({first:.2f}) "
                f"| {bundle.size_bytes() / 2**20:.1f} "
                f"| {memory(runs['torch'])} | {memory(runs['ort'])} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
