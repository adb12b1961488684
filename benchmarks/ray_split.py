"""Benchmark instrumentation: split a simulation round's framework time into Flower's and Ray's.

Not part of fedft's runtime: :mod:`benchmarks.scale_rounds` runs each simulation in a fresh driver
process started as ``python benchmarks/ray_split.py --child RUN_DIR OVERRIDES...``, which patches
Flower 1.39's Ray backend in that process only, then runs the scenario as ``fedft simulate`` does.

Flower's simulation engine (``flwr/server/superlink/fleet/vce/vce_api.py``) has one driver thread
per client actor; each takes an instruction from its queue and calls
``RayBackend.process_message`` (``vce/backend/raybackend.py``), which submits the message to an
idle ``ClientAppActor`` of the pool (``simulation/ray_transport/ray_actor.py``) and waits for the
reply. Two timers, per message, with the round (the instruction's ``server-round``), and the
times of Ray's start and of each round's end (``RunRecorder.round``) in the driver:

- driver: the seconds of ``RayBackend.process_message`` (``ray_split_driver.jsonl`` in RUN_DIR);
- actor: the seconds of the ``ClientApp`` call inside the actor, ``app(message, context)`` in
  ``VirtualClientEngineActor.run`` (``ray_split_actor.jsonl``): the ``app_fn`` the backend ships
  with every message is wrapped so that the ClientApp it returns is timed where it runs.

With fedft's own ``app_s`` (seconds inside the ClientApp's train handler) and N actors, per round:

    ray          = (sum process_message - sum ClientApp call) / N
                   Ray's part: submitting the task, pickling the message, the context and the
                   app_fn, moving them through Ray's object store to the actor process and the
                   reply back, the actor pool's bookkeeping, waiting for the result (in round 1
                   also the actors' start and the actor's first import of ``clients.app`` when it
                   unpickles the app_fn), plus, in round 1, the part of Ray's own start
                   (``RayBackend.__init__``: ``ray.init``; ``build``: the actor pool) that lies
                   inside the round (:func:`ray_start_in_round`);
    flower_actor = (sum ClientApp call - sum app_s) / N
                   Flower's ClientApp wrapper in the actor: its lifespan context, message-type
                   dispatch, and fedft's handler's last lines (the reply's Message) after app_s;
    busy         = sum process_message / N, and the rest of the wall time is the driver's:
    flower       = wall - server - client - ray
                   (= wall - server - busy + flower_actor): Flower's link state and inbox,
                   the engine's queues and threads, driver-side message handling, fedft's record
                   glue in the ServerApp outside the server's timers (decoding and screening the
                   replies is its decode_s), and any time an actor waits idle while others finish
                   the round.

``sum / N`` assumes the N actors are evenly busy.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

DRIVER_FILE = "ray_split_driver.jsonl"
ACTOR_FILE = "ray_split_actor.jsonl"


def message_round(message: Any) -> int | None:
    """The instruction's ``server-round`` (fedft's train config), or None if it has none."""
    try:
        value = message.content.config_records["config"]["server-round"]
    except (KeyError, AttributeError, TypeError):
        return None
    return int(value)


def _append(path: Path, row: dict) -> None:
    # One short line per write with O_APPEND: lines from several actor processes do not mix.
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


class TimedClientApp:
    """A ClientApp stand-in that times each call of the real one, where it runs (the actor)."""

    def __init__(self, app: Any, path: Path) -> None:
        self.app, self.path = app, path

    def __call__(self, message: Any, context: Any) -> Any:
        """Call the ClientApp; append its round, message type and seconds to the actor file."""
        started = time.perf_counter()
        try:
            return self.app(message=message, context=context)
        finally:
            seconds = time.perf_counter() - started
            row = {"round": message_round(message), "type": message.metadata.message_type}
            _append(self.path, {**row, "s": seconds})


class TimedAppFn:
    """The backend's ``app_fn`` (shipped to the actor with every message), returning a timed app."""

    def __init__(self, app_fn: Any, path: Path) -> None:
        self.app_fn, self.path = app_fn, path

    def __call__(self) -> TimedClientApp:
        """The real ``app_fn``'s ClientApp, timed."""
        return TimedClientApp(self.app_fn(), self.path)


def install(run_dir: Path) -> None:
    """Patch Flower's ``RayBackend`` in this process to write both timers into ``run_dir``."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    from fedft.report import RunRecorder

    run_dir.mkdir(parents=True, exist_ok=True)
    driver_path, actor_path = run_dir / DRIVER_FILE, run_dir / ACTOR_FILE
    lock = threading.Lock()
    init, build, process = RayBackend.__init__, RayBackend.build, RayBackend.process_message
    record_round = RunRecorder.round

    def event(name: str, **row: Any) -> None:
        with lock:
            _append(driver_path, {"event": name, **row})

    def timed_init(self: RayBackend, backend_config: Any) -> None:
        started = time.perf_counter()
        init(self, backend_config)  # ray.init: Ray's daemons start (or it attaches)
        event("ray_start", t0=started, t1=time.perf_counter())

    def timed_build(self: RayBackend, app_fn: Any) -> None:
        started = time.perf_counter()
        build(self, TimedAppFn(app_fn, actor_path))  # the actor pool
        event("ray_start", t0=started, t1=time.perf_counter())

    def timed_round(self: RunRecorder, server_round: int, metrics: dict) -> dict:
        row = record_round(self, server_round, metrics)
        event("round_end", round=server_round, t=time.perf_counter())
        return row

    def timed_process(self: RayBackend, message: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return process(self, message, context)
        finally:
            seconds = time.perf_counter() - started
            row = {"round": message_round(message), "type": message.metadata.message_type}
            with lock:
                _append(driver_path, {**row, "s": seconds})

    RayBackend.__init__ = timed_init  # type: ignore[method-assign]
    RayBackend.build = timed_build  # type: ignore[method-assign]
    RunRecorder.round = timed_round  # type: ignore[method-assign]
    RayBackend.process_message = timed_process  # type: ignore[method-assign]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _sums(path: Path) -> dict[int, tuple[int, float]]:
    """Per round: (messages, seconds summed) of one timer's file (train messages only)."""
    out: dict[int, list] = defaultdict(lambda: [0, 0.0])
    for row in _rows(path):
        if "event" not in row and row["round"] is not None and row["type"].startswith("train"):
            out[row["round"]][0] += 1
            out[row["round"]][1] += row["s"]
    return {r: (n, s) for r, (n, s) in out.items()}


def ray_start_in_round(run_dir: Path, server_round: int) -> float:
    """Seconds of Ray's start (``ray.init``, the actor pool) inside the round's wall time.

    The round runs from the previous round's record (round 0: the model before training) to its
    own; the engine starts Ray beside the server's round-0 eval, so the part of the start that is
    still going when round 1 begins is a wait of round 1.
    """
    rows = _rows(run_dir / DRIVER_FILE)
    ends = {r["round"]: r["t"] for r in rows if r.get("event") == "round_end"}
    if server_round not in ends or server_round - 1 not in ends:
        return 0.0
    lo, hi = ends[server_round - 1], ends[server_round]
    starts = [r for r in rows if r.get("event") == "ray_start"]
    return sum(max(0.0, min(hi, r["t1"]) - max(lo, r["t0"])) for r in starts)


def split(
    run_dir: Path, server_round: int, wall: float, server: float, app_sum: float, actors: int
) -> dict[str, float]:
    """One round's wall time split (seconds): client, server, ray, flower, flower_actor, busy."""
    driver, actor = _sums(run_dir / DRIVER_FILE), _sums(run_dir / ACTOR_FILE)
    if server_round not in driver or server_round not in actor:
        raise RuntimeError(f"round {server_round}: no Ray timings in {run_dir}")
    (_, process_sum), (_, call_sum) = driver[server_round], actor[server_round]
    client = app_sum / actors
    ray_start = ray_start_in_round(run_dir, server_round)
    ray = (process_sum - call_sum) / actors + ray_start
    return {
        "client": client,
        "server": server,
        "ray": ray,
        "flower": wall - server - client - ray,
        "flower_actor": (call_sum - app_sum) / actors,
        "busy": process_sum / actors,
        "ray_start": ray_start,
        "messages": float(driver[server_round][0]),
        "actor_messages": float(actor[server_round][0]),
    }


def child_main(run_dir: str, overrides: list[str]) -> None:
    """The driver process of one run: patch the backend, then simulate as ``fedft simulate``."""
    from simulation_overhead import SCENARIO

    from fedft.cli import simulate_scenario
    from fedft.config import load_scenario

    install(Path(run_dir))
    simulate_scenario(load_scenario(SCENARIO, overrides), Path(run_dir))


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--child":
        sys.exit("usage: ray_split.py --child RUN_DIR [OVERRIDES...] (used by scale_rounds.py)")
    # Imported by name: the actors unpickle TimedAppFn as ``ray_split.TimedAppFn`` (Flower puts
    # this process's sys.path, with benchmarks/ first, into the actors' PYTHONPATH).
    import ray_split

    ray_split.child_main(sys.argv[2], sys.argv[3:])
