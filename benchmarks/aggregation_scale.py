"""Server-side cost of one round at 100 and 1,000 replies, for every strategy: it must be linear.

Run from the repository root (not a test; pure server maths, no Ray, no clients; ~5-10 minutes):

    .venv/bin/python benchmarks/aggregation_scale.py [--replies 100 1000] [--repeat 2]

For each strategy of :data:`fedft.strategies.STRATEGIES`, and FedIT with each server-side option
(:data:`OPTIONS`: the server optimisers FedAvgM / FedAdam / FedYogi, the coordinate-wise median
and trimmed mean, central DP noise, and Krum, which is O(n^2) by definition), it builds the real
server strategy from ``simulations/default.toml`` (the built-in tiny model's real LoRA factors,
``federation.num_clients = N``, IID), lets it configure a round for N nodes (``configure_train``:
each node's message), builds one honest reply per node as that strategy's clients would send it
(the client-side encoders: factors as an ArrayRecord, FFA-LoRA's with ``lora_A`` as sent, a
``fedft.v1.ZoReply`` of derived seeds, a ``fedft.v1.FerretReply`` from
:func:`clients.ferret_client.ferret_reply`), then times ``aggregate_train`` (decode and check
every reply, screen the round, aggregate, check the aggregate): everything the server does for a
round but its global eval. The driver's torch runs on one thread, as in ``fedft simulate``.

Printed per strategy: the seconds (this process's CPU seconds, or ``--clock wall``) of
``configure_train`` and ``aggregate_train`` at each N (best of ``--repeat``, after an untimed
10-reply round of that strategy), their cost per reply, and the growth ``t(N_max) / t(N_min)``
against the linear ``N_max / N_min`` (10 for 100 -> 1,000): a ratio well above it is
super-linear.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.ferret_client import ferret_reply
from clients.replies import FactorReply
from fedft.config import Scenario, load_scenario
from fedft.factors import factors_digest
from fedft.flower_records import ZO_REPLY_KEY, factors_to_record, record_to_factors
from fedft.models import load_peft_model
from fedft.strategies import STRATEGIES
from fedft.wire.zo_reply import encode_zo_reply
from fedft.zo.seeds import ZoRecord, derived_seed_indices, seed_pool_id
from fedft.zo.trainable import initial_state
from server.federation import build_strategy

SCENARIO = "simulations/default.toml"
ROUND = 1
# Server-side options on top of a strategy (server optimisers, robust aggregators, central DP):
# name -> (strategy, overrides). FedProx is client-side only (a proximal term in local training).
OPTIONS: dict[str, tuple[str, list[str]]] = {
    "fedit+fedavgm": ("fedit", ["server_opt.optimizer='fedavgm'"]),
    "fedit+fedadam": ("fedit", ["server_opt.optimizer='fedadam'"]),
    "fedit+fedyogi": ("fedit", ["server_opt.optimizer='fedyogi'"]),
    "fedit+median": ("fedit", ["robust.aggregator='median'"]),
    "fedit+trimmed_mean": ("fedit", ["robust.aggregator='trimmed_mean'"]),
    "fedit+central_dp": ("fedit", ["privacy.mode='central'", "privacy.noise_multiplier=1.0"]),
    "fedit+krum": ("fedit", ["robust.aggregator='krum'"]),
}
QUADRATIC = {"fedit+krum"}  # Krum compares every pair of replies: O(n^2) by definition
# This process's CPU seconds by default: on a shared machine a server round's wall time is mostly
# other jobs' (torch runs on one thread here, so CPU seconds are the round's own work).
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCK = [time.process_time]  # set from --clock


class Grid:
    """What a strategy asks of Flower's Grid when it configures a round: the node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        """The connected nodes."""
        return self.nodes


def scenario_for(name: str, replies: int) -> Scenario:
    """The scenario of a strategy (or of a strategy with an option of :data:`OPTIONS`)."""
    strategy, extra = OPTIONS.get(name, (name, []))
    return load_scenario(
        SCENARIO,
        [
            *extra,
            f"federation.strategy='{strategy}'",
            f"federation.num_clients={replies}",
            f"federation.min_train_clients={replies}",
            "partition.method='iid'",
            f"data.num_examples={2 * replies + 200}",
            "zo.local_steps=10",
        ],
    )


def reply_message(instruction: Message, content: RecordDict, metrics: dict[str, float]) -> Message:
    content["metrics"] = MetricRecord(metrics)
    return Message(content, reply_to=instruction)


def honest_replies(scenario: Scenario, sent: list[Message], start_state: dict) -> list[Message]:
    """One reply per instruction, as the strategy's clients would send it (small honest moves)."""
    strategy = scenario.federation.strategy
    spec = STRATEGIES[strategy]
    out = []
    for k, msg in enumerate(sent):
        partition = k  # node ids are 1..N in partition order
        metrics = {"num-examples": 8.0 + k % 5, "partition": float(partition), "train_loss": 1.0}
        if spec.shared_seeds:  # zo: one int8 g per local step along the derived seeds
            zo = scenario.zo
            pool_id = seed_pool_id(scenario.run.seed, ROUND, zo.pool_size)
            seeds = derived_seed_indices(pool_id, ROUND, partition, zo.local_steps, zo.pool_size)
            records = [ZoRecord(s, float((t % 7) - 3)) for t, s in enumerate(seeds)]
            payload = encode_zo_reply(
                records,
                pool_id=pool_id,
                round=ROUND,
                client=partition,
                pool_size=zo.pool_size,
                grad_encoding=zo.grad_encoding,
                grad_scale=zo.grad_scale,
            )
            metrics["start_digest"] = float(factors_digest(start_state))
            content = RecordDict({ZO_REPLY_KEY: ConfigRecord({"records": payload})})
            out.append(reply_message(msg, content, metrics))
            continue
        records = msg.content.array_records
        start = record_to_factors(records["arrays"]) if "arrays" in records else start_state
        g = torch.Generator().manual_seed(1000 + k)
        trained = {
            name: t
            if (spec.frozen_a and ".lora_A." in name)
            else t + 1e-3 * torch.randn(t.shape, generator=g)
            for name, t in start.items()
        }
        reply = FactorReply(trained, metrics)
        if strategy == "ferret":
            reply = ferret_reply(reply, scenario, start, ROUND, node=partition)
        out.append(reply_message(msg, reply.content(scenario, partition), reply.metrics))
    return out


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        started = CLOCK[0]()
        result = fn()
        times.append(CLOCK[0]() - started)
    return min(times), result


def one_round(strategy_name: str, replies: int, model, repeat: int) -> tuple[float, float, str]:
    """(configure_train s, aggregate_train s, what came out) for ``replies`` nodes."""
    scenario = scenario_for(strategy_name, replies)
    state = initial_state(model, scenario.trained_modules)
    nodes = list(range(1, replies + 1))

    def configure() -> list[Message]:
        strategy = build_strategy(scenario, lambda *_: None)
        sent = list(
            strategy.configure_train(ROUND, factors_to_record(state), ConfigRecord(), Grid(nodes))
        )
        return [strategy, sent]

    t_conf, (strategy, sent) = best_of(configure, repeat)
    messages = honest_replies(scenario, sent, state)

    def aggregate() -> tuple:
        strategy.configure_train(ROUND, factors_to_record(state), ConfigRecord(), Grid(nodes))
        started = CLOCK[0]()
        result = strategy.aggregate_train(ROUND, messages)
        return result, CLOCK[0]() - started

    times = []
    outcome = ""
    for _ in range(repeat):
        gc.collect()
        (arrays, metrics), seconds = aggregate()
        times.append(seconds)
        outcome = "aggregated" if arrays is not None else "NO AGGREGATE"
    return t_conf, min(times), outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--clock", choices=list(CLOCKS), default="cpu", help="default: cpu")
    names = [*STRATEGIES, *OPTIONS]
    parser.add_argument("--strategies", nargs="+", default=names, choices=names)
    args = parser.parse_args()
    torch.set_num_threads(1)
    CLOCK[0] = CLOCKS[args.clock]
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    base = load_scenario(SCENARIO)
    model, _ = load_peft_model(base.model, base.lora, base.run.seed)
    state = initial_state(model, ())
    numel = sum(t.numel() for t in state.values())
    started = time.monotonic()
    print(
        f"server round cost, tiny model ({len(state)} factor tensors, {numel:,} values), "
        f"replies {args.replies}, best of {args.repeat}, {args.clock} seconds, torch threads 1, "
        "load "
        f"{os.getloadavg()[0]:.1f}"
    )
    low, high = min(args.replies), max(args.replies)
    header = ["strategy"]
    for n in args.replies:
        header += [f"configure {n}", f"aggregate {n}", f"ms/reply {n}"]
    header += [f"growth x (linear {high / low:g})"]
    rows = []
    for name in args.strategies:
        one_round(name, 10, model, 1)  # warm-up: lazy imports and first allocations, not timed
        results = {n: one_round(name, n, model, args.repeat) for n in args.replies}
        row = [name]
        for n in args.replies:
            conf, agg, outcome = results[n]
            row += [f"{conf:.3f} s", f"{agg:.3f} s", f"{(conf + agg) / n * 1e3:.2f}"]
            if outcome != "aggregated":
                row[-1] += f" ({outcome})"
        total = {n: results[n][0] + results[n][1] for n in args.replies}
        row.append(f"{total[high] / total[low]:.1f}" + (" (O(n^2))" if name in QUADRATIC else ""))
        rows.append(row)
        print(" | ".join(row), flush=True)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n(benchmark took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
