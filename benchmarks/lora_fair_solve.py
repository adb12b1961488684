"""LoRA-FAIR server cost: the factor-space solve against the dense reference, and one 7B round.

Run from the repository root:  python benchmarks/lora_fair_solve.py

1. One module, d = k = 4096, r = 16, 10 clients (a LLaMA-7B attention projection). Both solves run
   the same gradient descent on the same objective; the dense one (tests/unit/test_lora_fair.py)
   builds dW (d x k) and differentiates through it. Set-up is timed with 0 steps, the per-step
   cost from 2000 factor-space steps and 20 dense steps (a dense 500-step solve takes minutes; its
   500-step time is projected). Both start from the same factors, so after 20 steps their dB must
   agree: the relative difference is printed as a check.
2. One server round for a LLaMA-7B-shaped adapter: 32 layers x {q_proj, v_proj}, d = k = 4096,
   r = 16, 10 clients, through lora_fair_aggregate: the full 500 steps (tol = 0) on all threads and
   on one (on a busy 2-core machine two BLAS threads can lose to one), and the default early stop.

Factors look like a round of local training: A around peft's Kaiming-uniform initialisation
(entries ~ 1/sqrt(k)) with client drift of the same size, B ~ 1e-3 (B starts at 0).
"""

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedft.algorithms.lora_fair import LoraFairConfig, correct_module
from fedft.algorithms.lora_fair_state import lora_fair_aggregate
from tests.unit.test_lora_fair import dense_reference

D = K = 4096
RANK, CLIENTS = 16, 10
DENSE_STEPS, STEPS, FACTOR_STEPS = 20, 500, 2000


def lora_like_clients(gen: torch.Generator, n: int = CLIENTS):
    """Per client (A_k, B_k) around a shared pair, as after one round of local training."""
    scale = K**-0.5
    a0 = (torch.rand(RANK, K, generator=gen) * 2 - 1) * scale
    b0 = torch.randn(D, RANK, generator=gen) * 1e-3
    a_list = [a0 + (torch.rand(RANK, K, generator=gen) * 2 - 1) * scale for _ in range(n)]
    b_list = [b0 + torch.randn(D, RANK, generator=gen) * 1e-3 for _ in range(n)]
    return a_list, b_list


def timed(fn, *args, repeat: int = 1, **kwargs):
    """Return fn's output and its fastest wall time over `repeat` runs (the machine is shared)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return out, best


def one_module(gen: torch.Generator) -> None:
    a_list, b_list = lora_like_clients(gen)
    weights = [float(100 + 10 * i) for i in range(CLIENTS)]
    cfg = {s: LoraFairConfig(steps=s, tol=0.0) for s in (0, DENSE_STEPS, STEPS, FACTOR_STEPS)}
    correct_module(a_list, b_list, weights, cfg[0])  # warm-up
    _, fac_setup = timed(correct_module, a_list, b_list, weights, cfg[0], repeat=9)
    fac_full, fac_total = timed(correct_module, a_list, b_list, weights, cfg[STEPS], repeat=9)
    differences = []  # paired runs, so that load drifting between them cancels
    for _ in range(9):
        _, short = timed(correct_module, a_list, b_list, weights, cfg[0])
        _, long = timed(correct_module, a_list, b_list, weights, cfg[FACTOR_STEPS])
        differences.append(long - short)
    fac_step = statistics.median(differences) / FACTOR_STEPS
    fac_short = correct_module(a_list, b_list, weights, cfg[DENSE_STEPS])

    _, dense_setup = timed(dense_reference, a_list, b_list, weights, steps=0, tol=0.0)
    dense_out, dense_total = timed(
        dense_reference, a_list, b_list, weights, steps=DENSE_STEPS, tol=0.0
    )
    dense_step = (dense_total - dense_setup) / DENSE_STEPS
    dense_full = dense_setup + STEPS * dense_step  # projected

    agree = float((fac_short.delta_b.double() - dense_out[0]).norm() / dense_out[0].norm())
    print(f"(1) one module: d = k = {D}, r = {RANK}, {CLIENTS} clients, float64 solve")
    print(f"    {'':<14}{'set-up s':>10}{'per step ms':>13}{'500 steps s':>13}")
    print(f"    {'dense':<14}{dense_setup:>10.3f}{1e3 * dense_step:>13.2f}{dense_full:>12.1f}*")
    print(f"    {'factor space':<14}{fac_setup:>10.3f}{1e3 * fac_step:>13.3f}{fac_total:>13.3f}")
    print(
        f"    {'ratio':<14}{dense_setup / fac_setup:>10.1f}{dense_step / fac_step:>13.0f}"
        f"{dense_full / fac_total:>13.0f}"
    )
    print(
        f"    * dense: {DENSE_STEPS} steps timed, 500 projected. Factor: best of 9 runs; per "
        f"step = median over 9 pairs of ({FACTOR_STEPS} steps - 0 steps) / {FACTOR_STEPS}."
    )
    print(
        f"    check: dB after {DENSE_STEPS} steps, factor (float32 out) vs dense, relative "
        f"difference {agree:.1e}; 500-step cos {fac_full.cos_before:.6f} -> "
        f"{fac_full.cos_after:.6f}"
    )


def llama_round(gen: torch.Generator) -> None:
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(CLIENTS)]
    for layer in range(32):
        for proj in ("q_proj", "v_proj"):
            module = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            a_list, b_list = lora_like_clients(gen)
            for state, a, b in zip(states, a_list, b_list, strict=True):
                state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"] = a, b
    weights = [float(100 + 10 * i) for i in range(CLIENTS)]
    print(
        f"\n(2) one server round, LLaMA-7B-shaped adapter: 32 layers x {{q_proj, v_proj}} "
        f"= 64 modules, d = k = {D}, r = {RANK}, {CLIENTS} clients"
    )
    print(
        f"    {'config':<28}{'round s':>9}{'per module s':>14}{'cos before':>12}"
        f"{'cos after':>11}{'diverged':>10}"
    )
    threads = torch.get_num_threads()
    runs = (
        (f"{threads} thr, {STEPS} steps, tol=0", threads, LoraFairConfig(tol=0.0)),
        (f"1 thr, {STEPS} steps, tol=0", 1, LoraFairConfig(tol=0.0)),
        (f"{threads} thr, default tol=1e-7", threads, LoraFairConfig()),
    )
    for label, n_threads, config in runs:
        torch.set_num_threads(n_threads)
        (_, report), total = timed(lora_fair_aggregate, states, weights, config)
        m = report.to_metrics()
        print(
            f"    {label:<28}{total:>9.2f}{total / 64:>14.3f}{m['lora_fair.cos_before']:>12.6f}"
            f"{m['lora_fair.cos_after']:>11.6f}{report.diverged_modules:>10}"
        )
    torch.set_num_threads(threads)
    steps = sorted(s.steps_run for s in report.modules.values())
    print(
        f"    default config: steps run per module min {steps[0]}, median {steps[32]}, "
        f"max {steps[-1]}"
    )


def main() -> None:
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} threads, load average {os.getloadavg()[0]:.1f}\n")
    gen = torch.Generator().manual_seed(0)
    one_module(gen)
    llama_round(gen)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f} (the machine is shared)")


if __name__ == "__main__":
    main()
