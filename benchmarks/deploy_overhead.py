"""Per-round overhead of a deployed device: Flower's fresh process per message vs a warm one.

Run from the repository root (not a test; prints measured numbers; a heavy job, so through the
machine's slot script; about 10 minutes on the tiny model on 2 busy cores):

    /work/simslot.sh .venv/bin/python benchmarks/deploy_overhead.py
    flock /work/smollm2.lock nice -n -5 .venv/bin/python benchmarks/deploy_overhead.py \
        --scenario simulations/smollm2_chatterbot.toml --rounds 3

Measures
--------
For each ``fedft client --isolation`` (``subprocess``: Flower's default, a fresh
``flwr-clientapp`` process per message; ``process``: fedft's default, one long-lived ClientApp
process, :mod:`fedft.deploy.warm_clientapp`) and each device backend (``torch``, ``ort``), one real
deployment on loopback: ``fedft server --insecure`` (a SuperLink and the run) and one
``fedft client --insecure`` (a SuperNode), a federation of that one device, R rounds. Per round,
``metrics.jsonl`` gives ``wall_s`` (end of the previous round's global eval to the end of this
one), ``aggregate_s`` and ``eval_s`` (server side), and the device's ``train_s`` (seconds in its
local steps; for ``ort`` including its round's training-session setup). Then

    overhead = wall_s - aggregate_s - eval_s - train_s

is what the round cost beyond training: messages through the SuperLink and SuperNode, the
process start (interpreter, imports of torch, transformers, peft, flwr), model or bundle load,
tokenization, record conversion, and the device's local eval after training. Round 1 is shown
apart from rounds 2..R (the goal: at most 1 s per device after the first round). With the warm
process, its own line per message (claimed to pushed) splits the overhead: "in the app" is that
time minus ``train_s`` (the ClientApp's own work: records, local eval), the rest is Flower's
messaging (the SuperNode polls the SuperLink every 3 s when idle and its reply store every
0.5 s; the ServerApp polls replies every 0.1 s).

Notes
-----
The machine is shared and noisy: the load average is printed with the results. Every process
runs with ``FLWR_HOME`` and the run folder in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEDFT = [sys.executable, "-m", "fedft.cli"]
SETTINGS = [
    "federation.num_clients=1",
    "federation.min_train_clients=1",
    "partition.method='iid'",
    "federation.round_timeout_s=900",
]
TINY = ["train.local_steps=5", "data.num_examples=300", "data.global_eval_size=32"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deploy(
    base: Path, isolation: str, backend: str, rounds: int, scenario: str | None, extra: list[str]
) -> list[dict]:
    """One deployed run; its round rows with the device's train_s."""
    folder = base / f"{isolation}-{backend}"
    folder.mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(folder / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    fleet, control = free_port(), free_port()
    server_cmd = [*FEDFT, "server", "--insecure", "--address", "127.0.0.1"]
    server_cmd += ["--port", str(fleet), "--control-port", str(control)]
    if scenario:
        server_cmd.append(str(Path(scenario).resolve()))
    for setting in [*SETTINGS, f"federation.num_rounds={rounds}", *extra]:
        server_cmd += ["--set", setting]
    client_cmd = [*FEDFT, "client", "--insecure", "--server", f"127.0.0.1:{fleet}"]
    client_cmd += ["--partition-id", "0", "--num-partitions", "1", "--backend", backend]
    client_cmd += ["--isolation", isolation, "--runtime-port", str(free_port())]
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    server = subprocess.Popen(server_cmd, cwd=folder, env=env, **pipe)
    client = subprocess.Popen(client_cmd, cwd=folder, env=env, **pipe)
    copies = [stamped(server, folder / "server.log"), stamped(client, folder / "client.log")]
    try:
        code = server.wait(timeout=3600)
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
        for copy in copies:
            copy.join(timeout=30)
    if code != 0:
        tail = (folder / "server.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{isolation}/{backend}: fedft server exited with {code}\n{tail}")
    served = [  # the warm process's own line per train message: claimed to pushed
        float(text.split(" message in ", 1)[1].split()[0])
        for _, text in lines(folder / "client.log")
        if text.startswith("fedft: ClientApp process") and "served train message" in text
    ]
    metrics = next(folder.glob("runs/*/metrics.jsonl"))
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = {r["round"]: r["train_s"] for r in rows if r["kind"] == "client"}
    app_s = {r["round"]: r.get("app_s", float("nan")) for r in rows if r["kind"] == "client"}
    out = []
    for row in rows:
        if row["kind"] == "round" and row["round"] >= 1:
            phase = row["wall_s"] - row.get("aggregate_s", 0.0) - row.get("eval_s", 0.0)
            r = row["round"]
            app = served[r - 1] - train[r] if len(served) >= r else float("nan")
            row_out = {"round": r, "train_s": train[r], "overhead": phase - train[r], "app": app}
            out.append(row_out | {"local": app_s[r] - train[r]})  # the ClientApp beyond training
    for row, parts in zip(out, breakdown(folder, rows), strict=False):
        row.update(parts)
    return out


def stamped(proc: subprocess.Popen, path: Path) -> threading.Thread:
    """Copy ``proc``'s output to ``path``, each line prefixed with the wall clock when read."""

    def copy() -> None:
        with path.open("w") as out:
            for raw in iter(proc.stdout.readline, b""):
                out.write(f"{time.time():.3f} {raw.decode(errors='replace')}")
                out.flush()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def lines(path: Path) -> list[tuple[float, str]]:
    """A stamped log's lines: (wall clock, text without Flower's colour codes and level)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stamp, _, text = line.partition(" ")
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        out.append((float(stamp), re.sub(r"^(INFO|WARNING|ERROR|DEBUG) *:\s*", "", text)))
    return out


def first(events: list[tuple[float, str]], after: float, marker: str) -> float:
    """The time of the first line at or after ``after`` that contains ``marker`` (nan if none)."""
    return next((t for t, text in events if t >= after and marker in text), float("nan"))


def breakdown(folder: Path, rows: list[dict]) -> list[dict]:
    """Where each round's time goes, from the stamped logs (one device's train message a round).

    ``to_node``: end of the previous round's eval to the SuperNode's "Receiving" (the server's
    configure and push, the SuperNode's idle poll of the SuperLink, 3 s in Flower 1.39);
    ``node_pull``: "Receiving" to "Received successfully" (the SuperNode pulls the message);
    ``device``: to "Sending" (the ClientApp process: start-up if cold, pull from the SuperNode,
    train, local eval, push back, and the SuperNode noticing the reply, a 0.5 s poll; of it
    ``local`` is the ClientApp's own work beyond training: ``app_s - train_s``, its local eval
    and generation, the records);
    ``node_send``: "Sending" to "Sent successfully"; ``server_pull``: to the server having the
    reply (its round line minus ``eval_s`` and ``aggregate_s``: its pull of the reply).
    """
    server, client = lines(folder / "server.log"), lines(folder / "client.log")
    rounds = {r["round"]: r for r in rows if r["kind"] == "round"}
    ends = {}
    for t, text in server:
        if (m := re.match(r"round (\d+)/\d+ ", text)) is not None:
            ends.setdefault(int(m.group(1)), t)
    out = []
    for r in sorted(k for k in rounds if k >= 1 and k in ends and k - 1 in ends):
        start = ends[r - 1]
        recv = first(client, start, "Receiving: train message")
        rcvd = first(client, recv, "Received successfully")
        send = first(client, rcvd, "Sending: train message")
        sent = first(client, send, "Sent successfully")
        got = ends[r] - rounds[r].get("eval_s", 0.0) - rounds[r].get("aggregate_s", 0.0)
        out.append(
            {
                "to_node": recv - start,
                "node_pull": rcvd - recv,
                "device": send - rcvd,
                "node_send": sent - send,
                "server_pull": got - sent,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", help="scenario file (default: the tiny default)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--backends", default="torch,ort")
    parser.add_argument("--isolations", default="subprocess,process")
    parser.add_argument("--keep", type=Path, help="keep the run folders and logs here")
    parser.add_argument("--set", action="append", default=[], dest="extra")
    args = parser.parse_args()
    extra = args.extra if args.scenario else [*TINY, *args.extra]
    results = {}
    with tempfile.TemporaryDirectory(prefix="fedft-deploy-bench-") as tmp:
        base = Path(tmp) if args.keep is None else args.keep
        base.mkdir(parents=True, exist_ok=True)
        for backend in args.backends.split(","):
            for isolation in args.isolations.split(","):
                started = time.monotonic()
                rows = deploy(base, isolation, backend, args.rounds, args.scenario, extra)
                results[(isolation, backend)] = rows
                print(
                    f"{isolation:>10} {backend:>5}: {time.monotonic() - started:.0f} s, "
                    + ", ".join(
                        f"r{r['round']} {r['overhead']:.1f}+{r['train_s']:.1f}" for r in rows
                    ),
                    flush=True,
                )
    print(
        "\nper-round overhead = wall - aggregate - eval - train_s (s), "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'backend':<8}{'isolation':<12}{'round 1':>9}{'rounds 2..R mean':>18}{'max':>7}"
        f"{'of it in the app':>18}{'train_s mean':>14}"
    )
    for (isolation, backend), rows in sorted(
        results.items(), key=lambda kv: (kv[0][1], kv[0][0] != "subprocess")
    ):
        later = [r["overhead"] for r in rows[1:]]
        print(
            f"{backend:<8}{isolation:<12}{rows[0]['overhead']:>9.1f}"
            f"{statistics.mean(later) if later else float('nan'):>18.2f}"
            f"{max(later) if later else float('nan'):>7.2f}"
            f"{statistics.mean(r['app'] for r in rows[1:]) if later else float('nan'):>18.2f}"
            f"{statistics.mean(r['train_s'] for r in rows):>14.2f}"
        )
    parts = ("to_node", "node_pull", "device", "local", "node_send", "server_pull")
    print("\nwhere the time goes, rounds 2..R mean (s; breakdown() says what each part is)")
    print(f"{'backend':<8}{'isolation':<12}" + "".join(f"{p:>12}" for p in parts) + "  train_s")
    for (isolation, backend), rows in sorted(results.items()):
        later = rows[1:] or rows
        print(
            f"{backend:<8}{isolation:<12}"
            + "".join(
                f"{statistics.mean(r.get(p, float('nan')) for r in later):>12.2f}" for p in parts
            )
            + f"  {statistics.mean(r['train_s'] for r in later):.2f}"
        )


if __name__ == "__main__":
    main()
