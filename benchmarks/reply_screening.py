"""What the server's reply checks cost and how much room honest replies leave, on a real model.

Trains honest clients of a scenario (SmolLM2-135M by default) for one round from the initial
adapter with the real torch client code, then prints, side by side in one run:

- each honest reply's update norm relative to the global factors, against
  ``robust.max_relative_update`` (the headroom an honest client has before it would be dropped);
- whether scaled and blown-up versions of an honest reply are dropped when they come alone;
- the time of the per-reply checks and of the robust aggregators as ratios of the plain
  weighted average (FedIT) of the same replies.

Usage: make smollm2 && .venv/bin/python benchmarks/reply_screening.py [SCENARIO] [--clients N]
"""

from __future__ import annotations

import argparse
import time

import torch

from clients.runtimes.torch_lora import TorchLora
from fedft.algorithms.fedavg import weighted_average
from fedft.algorithms.lora_fair import LoraFairConfig
from fedft.algorithms.lora_fair_state import lora_fair_aggregate
from fedft.algorithms.robust import coordinate_median, krum_select, trimmed_mean
from fedft.algorithms.validation import (
    check_lora_products,
    check_update_limits,
    state_norm,
    update_norm,
)
from fedft.config import load_scenario
from fedft.errors import ReplyError
from fedft.models import load_peft_model
from fedft.zo.trainable import initial_state


def best_of(fn, repeat=5):
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", nargs="?", default="simulations/smollm2_chatterbot.toml")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenario = load_scenario(args.scenario)
    robust = scenario.robust
    model, _ = load_peft_model(scenario.model, scenario.lora, scenario.run.seed)
    start = initial_state(model, ())
    size = state_norm(start)
    numel = sum(t.numel() for t in start.values())
    print(
        f"scenario {args.scenario}: {len(start)} factor tensors, {numel:,} values, ||X|| {size:.4g}"
    )

    replies = []
    for pid in range(args.clients):
        started = time.perf_counter()
        trained = TorchLora().train_round(scenario, pid, start, 1, node=pid)
        factors, metrics = trained.factors, trained.metrics
        norm = update_norm(factors, start)
        replies.append((factors, metrics["num-examples"]))
        headroom = robust.max_relative_update * size / norm
        print(
            f"client {pid}: {scenario.train.local_steps} steps in "
            f"{time.perf_counter() - started:.1f} s, ||dX|| {norm:.4g} = {norm / size:.4g} x ||X|| "
            f"(limit {robust.max_relative_update:g} x: headroom {headroom:.3g}x)"
        )

    honest = replies[0][0]
    delta = {k: honest[k] - start[k] for k in start}
    for label, state in [
        ("honest x 10", {k: start[k] + 10 * delta[k] for k in start}),
        ("honest x 1000", {k: start[k] + 1000 * delta[k] for k in start}),
        ("factors x 1e20", {k: v * 1e20 for k, v in start.items()}),
    ]:
        try:
            check_update_limits(state, start, robust.max_update_norm, robust.max_relative_update)
            check_lora_products(state)
            verdict = "accepted"
        except ReplyError as err:
            verdict = f"dropped ({str(err)[:60]}...)"
        print(f"alone, {label}: {verdict}")

    states = [f for f, _ in replies]
    weights = [w for _, w in replies]
    mean_s = best_of(lambda: weighted_average(states, weights))

    def checks():  # as the server runs them: ||X|| once per round
        start_norm = state_norm(start)
        for f in states:
            check_update_limits(
                f, start, robust.max_update_norm, robust.max_relative_update, start_norm
            )
            check_lora_products(f)

    rows = [
        ("weighted average (FedIT)", mean_s),
        ("per-reply checks (norm limits, finite B A)", best_of(checks)),
        ("coordinate median", best_of(lambda: coordinate_median(states))),
        ("trimmed mean (0.25)", best_of(lambda: trimmed_mean(states, 0.25))),
        ("multi-krum selection (f=1)", best_of(lambda: krum_select(states, 1, len(states) - 1))),
        (
            "LoRA-FAIR (500 steps)",
            best_of(lambda: lora_fair_aggregate(states, weights, LoraFairConfig()), repeat=1),
        ),
    ]
    print(f"\n{len(states)} replies, 1 torch thread, min of 5:")
    print("| step | time | x weighted average |\n| --- | ---: | ---: |")
    for label, seconds in rows:
        print(f"| {label} | {seconds * 1e3:.2f} ms | {seconds / mean_s:.2f} |")


if __name__ == "__main__":
    main()
