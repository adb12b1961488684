"""Zeroth-order path: uplink bytes, cost of a perturbation pass, zo step vs first-order step.

Run from the repository root (not a test; prints measured ratios, side by side, in one run):

    .venv/bin/python benchmarks/zo_perturb.py                  # GPT-2-small-shaped 124M weights
    .venv/bin/python benchmarks/zo_perturb.py --params 30e6    # when memory or time is tight

1. Uplink: real ``fedft.v1.ZoReply`` messages for tau = 10, 50, 200 local steps, encoded, counted.
2. One ``perturb_`` pass over the weights against a plain in-place add over the same tensors (the
   floor: ``w.add_(u)`` with ``u`` precomputed), a scalar add, and MeZO's torch.randn + add_.
   Timings interleave the variants and keep the minimum over repeats (the machine is shared).
3. A zo step (2 forwards + 3 perturbation passes) against a first-order step (forward, backward,
   SGD) on the same tiny transformer LM, each in its own process for its peak memory.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedft.wire.zo_reply import encode_zo_reply
from fedft.zo.rng import perturb_
from fedft.zo.seeds import ZoRecord, derived_seed_indices, seed_pool_id

POOL_SIZE = 4096  # FedKSeed's K is in the thousands: 2-byte explicit indices
CLIENT = 37  # the client's index in the scenario


def gpt2_small_shapes(target: float) -> list[tuple[int, ...]]:
    """GPT-2 small's weight shapes (124.4M), truncated to about ``target`` parameters."""
    d, vocab, ctx = 768, 50257, 1024
    block = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,)]
    block += [(4 * d, d), (d,)]
    shapes = block * 12 + [(d,), (d,), (ctx, d), (vocab, d)]
    out, total = [], 0
    for shape in shapes:
        if total >= target:
            break
        out.append(shape)
        total += math.prod(shape)
    return out


def uplink_table() -> None:
    pid = seed_pool_id(run_seed=2024, round=0, size=POOL_SIZE)
    print(f"\n## Uplink per client-round (pool K={POOL_SIZE}, real encoded messages)\n")
    print("| tau | encoding | seeds | bytes | bytes/step | header bytes |")
    print("| ---: | --- | --- | ---: | ---: | ---: |")
    for tau in (10, 50, 200):
        indices = derived_seed_indices(pid, 7, CLIENT, tau, POOL_SIZE)
        grads = torch.randn(tau, generator=torch.Generator().manual_seed(tau)).tolist()
        records = [ZoRecord(i, g) for i, g in zip(indices, grads, strict=True)]
        for encoding, seeds, per_step in (
            ("int8", "derived", 1),
            ("int8", "explicit", 3),
            ("fp32", "derived", 4),
        ):
            data = encode_zo_reply(
                records,
                pool_id=pid,
                round=7,
                client=CLIENT,
                pool_size=POOL_SIZE,
                grad_encoding=encoding,
                seed_choice=seeds,
            )
            header = len(data) - per_step * tau
            print(
                f"| {tau} | {encoding} | {seeds} | {len(data)} | {len(data) / tau:.2f} | {header} |"
            )
    lora = 12 * 2 * (768 * 8 + 8 * 768) * 4
    print(f"\nFor scale: fp32 LoRA r=8 factors on GPT-2 small's q,v projections = {lora:,} bytes.")


def timed(results: dict[str, list[tuple[float, float]]], name: str, fn) -> None:
    """Append (wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    results.setdefault(name, []).append((time.perf_counter() - wall, time.process_time() - cpu))


def perturbation_table(params: float, repeats: int) -> None:
    shapes = gpt2_small_shapes(params)
    numel = sum(math.prod(s) for s in shapes)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    deltas = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]

    def randn_add() -> None:  # MeZO: regenerate z with torch's RNG from the seed
        g = torch.Generator().manual_seed(5)
        for w in weights:
            w.add_(torch.randn(w.shape, generator=g), alpha=1e-3)

    variants = {
        "plain add_ of a same-size tensor": lambda: [
            w.add_(u) for w, u in zip(weights, deltas, strict=True)
        ],
        "scalar add_": lambda: [w.add_(1e-3) for w in weights],
        "perturb_ (rademacher-mix32)": lambda: perturb_(weights, seed=5, scale=1e-3),
        "torch.randn + add_ (MeZO style)": randn_add,
    }
    results: dict[str, list[tuple[float, float]]] = {}
    for fn in variants.values():  # warm-up: first touch, sign tables
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            timed(results, name, fn)
    floor = {
        kind: min(t[kind] for t in results["plain add_ of a same-size tensor"]) for kind in (0, 1)
    }
    print(f"\n## One pass over {numel / 1e6:.1f}M fp32 weights in {len(shapes)} tensors")
    print(
        f"(interleaved, {repeats} repeats, {torch.get_num_threads()} torch threads; min and median"
    )
    print("wall time, and min CPU time, which other processes on a shared machine disturb less)\n")
    print("| pass | min ms | median ms | min / plain add_ | CPU min ms | CPU min / plain add_ |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, times in results.items():
        wall = [t[0] for t in times]
        cpu = min(t[1] for t in times)
        print(
            f"| {name} | {min(wall) * 1e3:.1f} | {statistics.median(wall) * 1e3:.1f} "
            f"| {min(wall) / floor[0]:.2f} | {cpu * 1e3:.1f} | {cpu / floor[1]:.2f} |"
        )


STEP_SCRIPT = """
import sys, torch
from benchmarks.zo_perturb import run_steps
torch.set_num_threads(int(sys.argv[2]))
print(*run_steps(sys.argv[1], int(sys.argv[3])))
"""


def tiny_lm() -> tuple[torch.nn.Module, torch.Tensor]:
    """A 4-layer transformer LM, d=256, vocab 8192 (6.3M parameters), and one batch 8 x 128."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True)
    model = torch.nn.Sequential(
        torch.nn.Embedding(8192, 256),
        torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False),
        torch.nn.Linear(256, 8192),
    )
    return model, torch.randint(0, 8192, (8, 129))


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident memory (``VmRSS``) or its high-water mark since the last reset (``VmHWM``)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_peak_rss() -> None:
    """Restart the ``VmHWM`` high-water mark at the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def run_steps(mode: str, steps: int) -> tuple[float, int, int]:
    """Median step seconds, peak RSS above the loaded model (bytes), parameter count."""
    from fedft.zo.step import spsa_step_

    model, batch = tiny_lm()
    params = [p for p in model.parameters()]
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def loss() -> torch.Tensor:
        logits = model(inputs)  # (8, 128, vocab)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 8192), targets.reshape(-1))

    optimizer = torch.optim.SGD(params, lr=1e-3)
    base = rss_bytes()
    reset_peak_rss()
    times = []
    for step in range(steps):
        start = time.perf_counter()
        if mode == "zo":
            spsa_step_(params, loss, seed=step, eps=1e-3, lr=1e-4)
        else:
            optimizer.zero_grad(set_to_none=False)
            loss().backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), rss_bytes("VmHWM") - base, sum(p.numel() for p in params)


def step_table(threads: int, steps: int) -> None:
    rows = {}
    for mode in ("zo", "first-order", "zo", "first-order"):  # twice, alternating; keep the best
        out = subprocess.run(
            [sys.executable, "-c", STEP_SCRIPT, mode, str(threads), str(steps)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
            # fixed mmap threshold: freed activations go back to the OS, so RSS tracks live memory
            env=os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"},
        ).stdout.split()
        seconds, peak, numel = float(out[0]), int(out[1]), int(out[2])
        best = rows.get(mode, (math.inf, math.inf, numel))
        rows[mode] = (min(best[0], seconds), min(best[1], peak), numel)
    numel = rows["zo"][2]
    print(f"\n## One training step, tiny transformer LM ({numel / 1e6:.1f}M params, batch 8 x 128)")
    weights = numel * 4 / 2**20
    print(f"(median of {steps - 1} steps, best of 2 processes; weights = {weights:.1f} MiB)\n")
    print("| step | ms | peak RSS above loaded model, MiB | vs first-order time | vs memory |")
    print("| --- | ---: | ---: | ---: | ---: |")
    fo_time, fo_peak, _ = rows["first-order"]
    for mode, (seconds, peak, _) in rows.items():
        print(
            f"| {mode} | {seconds * 1e3:.0f} | {peak / 2**20:.1f} | {seconds / fo_time:.2f} "
            f"| {peak / fo_peak:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=124.5e6, help="weights to perturb")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uplink_table()
    perturbation_table(args.params, args.repeats)
    step_table(args.threads, args.steps)


if __name__ == "__main__":
    main()
