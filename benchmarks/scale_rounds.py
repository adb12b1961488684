"""Federations of the size papers run, on this machine: wall time per round and what it is spent on.

Run from the repository root (not a test; one simulation at a time, each in a fresh driver
process; on 2 cores zo100 takes ~3 minutes, fo100 ~4, zo1000 ~15-25):

    .venv/bin/python benchmarks/scale_rounds.py zo100 fo100 zo1000 [--results FILE] [--keep DIR]

Each run is ``simulations/default.toml`` (tiny model, IID) for 3 rounds, every client training
every round, with per-client compute kept small so that the framework's part shows:

- ``zoN``: ``federation.strategy = "zo"``, N clients, 4 zo steps each, a pool of 64 seeds (a
  client's catch-up replays at most 64 seeds a round), 3,000 examples (>= 2 a client);
- ``fo100``: FedIT (first-order LoRA, factors up and down), 100 clients, 4 local steps.

Per round, from ``metrics.jsonl``: ``wall_s`` (end of the previous global eval to the end of this
one), the server's ``decode_s`` (decode and check every reply, screen the round), ``aggregate_s``
(aggregate the kept replies) and ``eval_s`` (global eval), each
client's ``app_s`` (seconds inside the ClientApp's train handler: set-up, zo catch-up, training,
local eval, encoding) and ``train_s`` (inside the local training loop); and from the driver's
timers (:mod:`ray_split`, benchmark instrumentation only: each run's driver is
``benchmarks/ray_split.py --child``) the seconds of each ``RayBackend.process_message`` (hand one
message to a Ray actor, wait for the reply) and of each ClientApp call inside the actor. With N
client actors (floor(CPUs / cpus_per_client)),

    client = sum(app_s) / N,   server = decode_s + aggregate_s + eval_s,
    ray    = (sum process_message - sum ClientApp call) / N   (Ray dispatch, object transfer,
                                                               the actor pool),
    flower = wall - server - client - ray   (link state, inbox, the engine's queues, driver-side
                                             message handling, fedft's record glue, and Flower's
                                             ClientApp wrapper in the actor: "(in actor)"),
    framework = flower + ray,   share = framework / wall.

``sum / N`` assumes the N actors are evenly busy, so an actor idle while another finishes the
round is counted in Flower's part.
Memory: a sampler reads the RSS of the driver and of every descendant (Ray daemons, workers, the
ClientAppActors) every 0.2 s (PSS every second), as ``benchmarks/simulation_overhead.py`` does.
Results are appended to ``--results`` (JSON lines), and all runs in it are printed as tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray_split
from simulation_overhead import MB, available_memory, run_in_child, table

BASE = ["partition.method='iid'", "federation.num_rounds=3", "data.global_eval_size=32"]
RUNS = {
    "zo100": [
        *BASE,
        "federation.strategy='zo'",
        "federation.num_clients=100",
        "zo.local_steps=4",
        "zo.pool_size=64",
        "data.num_examples=3000",
    ],
    "zo1000": [
        *BASE,
        "federation.strategy='zo'",
        "federation.num_clients=1000",
        "zo.local_steps=4",
        "zo.pool_size=64",
        "data.num_examples=3000",
    ],
    "fo100": [*BASE, "federation.strategy='fedit'", "federation.num_clients=100"]
    + ["train.local_steps=4"],
}


def measure(label: str, work: Path, keep: Path | None = None) -> dict:
    """Run one configuration in a fresh driver; its per-round times and peak memory."""
    load0 = os.getloadavg()[0]
    run = run_in_child(label, RUNS[label], work, script=ray_split.__file__)
    if keep is not None:  # the raw files behind the table
        (keep / label).mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", ray_split.DRIVER_FILE, ray_split.ACTOR_FILE):
            shutil.copy(work / label / name, keep / label / name)
    rounds = []
    for r in run.rounds:
        if r["round"] == 0:
            continue
        clients = [c for c in run.clients if c["round"] == r["round"]]
        app = sum(c.get("app_s", 0.0) for c in clients) / run.actors
        train = sum(c["train_s"] for c in clients) / run.actors
        server = r.get("decode_s", 0.0) + r.get("aggregate_s", 0.0) + r["eval_s"]
        app_sum = sum(c.get("app_s", 0.0) for c in clients)
        parts = ray_split.split(work / label, r["round"], r["wall_s"], server, app_sum, run.actors)
        rounds.append(
            {
                "round": r["round"],
                "clients": len(clients),
                "wall": r["wall_s"],
                "client": app,
                "train": train,
                "aggregate": r.get("aggregate_s", 0.0),
                "decode": r.get("decode_s", 0.0),
                "eval": r["eval_s"],
                "framework": r["wall_s"] - app - server,
                **{k: parts[k] for k in ("ray", "flower", "flower_actor", "busy", "ray_start")},
                "messages": parts["messages"],
            }
        )
    mem = run.mem
    actor = mem.peak_of("actor")
    return {
        "label": label,
        "overrides": RUNS[label],
        "actors": run.actors,
        "actors_seen": mem.count("actor"),
        "total_s": run.total_s,
        "startup_s": run.startup_s,
        "rounds": rounds,
        "load": [load0, os.getloadavg()[0]],
        "mem": {
            "driver_rss": mem.groups["driver"].rss,
            "actor_rss": actor.rss,
            "actor_uss": actor.uss,
            "ray_rss": mem.groups["ray"].rss,
            "all_pss": mem.groups["all"].pss,
            "all_rss": mem.groups["all"].rss,
        },
    }


def report(results: list[dict]) -> None:
    header = ["run: round", "clients", "wall s", "client s", "(train s)", "server s", "Flower s"]
    header += ["(in actor)", "Ray s", "framework s", "share"]
    rows = []
    for res in results:
        steady = [r for r in res["rounds"] if r["round"] >= 2]
        for r in res["rounds"]:
            rows.append(
                [
                    f"{res['label']}: {r['round']}",
                    str(r["clients"]),
                    f"{r['wall']:.1f}",
                    f"{r['client']:.1f}",
                    f"{r['train']:.1f}",
                    f"{r.get('decode', 0.0) + r['aggregate'] + r['eval']:.2f}",
                    f"{r['flower']:.1f}" if "flower" in r else "-",
                    f"{r['flower_actor']:.2f}" if "flower" in r else "-",
                    f"{r['ray']:.1f}" if "ray" in r else "-",
                    f"{r['framework']:.1f}",
                    f"{r['framework'] / r['wall']:.0%}",
                ]
            )
        if steady:
            n = len(steady)
            wall = sum(r["wall"] for r in steady)

            def mean(key: str, digits: int = 1, rounds: list[dict] = steady) -> str:
                if not all(key in r for r in rounds):
                    return "-"
                return f"{sum(r[key] for r in rounds) / len(rounds):.{digits}f}"

            frame = sum(r["framework"] for r in steady)
            rows.append(
                [f"{res['label']}: steady (2-{steady[-1]['round']})", "", f"{wall / n:.1f}"]
                + [mean("client"), mean("train"), "", mean("flower"), mean("flower_actor", 2)]
                + [mean("ray"), f"{frame / n:.1f}", f"{frame / wall:.0%}"]
            )
    print(table(header, rows))
    starts = [
        f"{res['label']} {res['rounds'][0]['ray_start']:.1f} s"
        for res in results
        if res["rounds"] and "ray_start" in res["rounds"][0]
    ]
    if starts:
        print(
            "Ray's own start (ray.init, actor pool) inside round 1, in its Ray s: "
            + ", ".join(starts)
        )
    print()
    mrows = []
    for res in results:
        m = res["mem"]
        clients = res["rounds"][0]["clients"] if res["rounds"] else 0
        mrows.append(
            [
                res["label"],
                str(clients),
                f"{m['driver_rss'] / MB:,.0f}",
                f"{m['driver_rss'] / max(clients, 1) / 1024:,.0f}",
                f"{res['actors_seen']} x {m['actor_rss'] / MB:,.0f}",
                f"{m['ray_rss'] / MB:,.0f}",
                f"{m['all_pss'] / MB:,.0f}",
                f"{res['total_s']:.0f}",
                f"{res['load'][0]:.0f}-{res['load'][1]:.0f}",
            ]
        )
    print(
        table(
            ["PEAK MEMORY (MB)", "clients", "driver RSS", "kB/client", "actors RSS"]
            + ["Ray daemons", "all PSS", "run s", "load"],
            mrows,
        )
    )
    by_label = {r["label"]: r for r in results}
    if "zo100" in by_label and "zo1000" in by_label:
        small, large = by_label["zo100"]["mem"], by_label["zo1000"]["mem"]
        growth = (large["driver_rss"] - small["driver_rss"]) / 900
        actor = (large["actor_rss"] - small["actor_rss"]) / 900
        print(
            f"\nper extra virtual client (zo100 -> zo1000): driver +{growth / 1024:.0f} kB RSS, "
            f"each actor +{actor / 1024:.1f} kB RSS (the model is loaded once per actor)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", choices=list(RUNS))
    parser.add_argument("--results", type=Path, default=Path("scale_rounds.jsonl"))
    parser.add_argument("--keep", type=Path, help="copy each run's metrics and timers here")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, {available_memory() / 1e9:.1f} GB available", file=sys.stderr)
    for label in args.runs:
        with tempfile.TemporaryDirectory(prefix="fedft-scale-") as tmp:
            started = time.monotonic()
            res = measure(label, Path(tmp), args.keep)
            print(f"[{label}] {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        with args.results.open("a") as f:
            f.write(json.dumps(res) + "\n")
    if args.results.is_file():
        report([json.loads(line) for line in args.results.read_text().splitlines() if line])


if __name__ == "__main__":
    main()
