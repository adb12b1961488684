"""Framework overhead and memory of a fedft simulation: how much of the wall time is not training.

Run from the repository root (not a test; prints measured numbers; 2.5-4 minutes on 2 cores):

    .venv/bin/python benchmarks/simulation_overhead.py

Measures
--------
1. Time. ``simulations/default.toml`` with 10 IID clients and 4 rounds runs in this process
   through :func:`fedft.simulate.simulate`, twice: ``simulation.cpus_per_client = 1`` (Flower's Ray
   backend makes N = floor(CPUs / cpus_per_client) = 2 ClientAppActors, so two clients train at
   once) and ``= 2`` (N = 1: clients strictly one after another). Per round, ``metrics.jsonl``
   gives ``wall_s`` (end of the previous global eval to the end of this one), each client's
   ``train_s`` (seconds inside ``train_local``), ``aggregate_s`` and ``eval_s``; then

       overhead = wall - sum(train_s) / N - aggregate_s - eval_s,   share = overhead / wall.

   ``sum(train_s) / N`` is the least time training can take on the critical path (N busy actors,
   perfect balance), so with N > 1 the overhead is an upper bound; with N = 1 it is exact. Overhead
   holds everything else: message passing through Flower's in-memory link state, Ray task
   dispatch, (de)serialising records, the client's set-up, its local eval after training, record
   conversion and validation on the server, metrics writing, and any CPU time stolen by the rest.
   Round 1 (Ray actors start: a fresh interpreter imports torch, transformers, peft and flwr,
   then builds the model and the data) is shown apart from the steady rounds 2..R. The whole-run
   row also counts the start-up before round 0 (Ray and Flower start, server model load; this
   script imports flwr and torch beforehand, so those imports are not in it), round 0 (the
   server's eval of the untrained adapter) and the shutdown after the last round (adapter and
   plot written, Ray stopped), taken from the run folder's file times. The server's global eval
   is also timed alone in this process with 1 torch thread and with torch's default (the driver's).
2. Memory. A sampler thread records, every 0.2 s, the RSS of the driver (this process, which runs
   the ServerApp, the in-memory SuperLink and the Ray backend) and of all its descendants (Ray's
   gcs_server, raylet, dashboard and agents, idle workers, the ClientAppActors, found by their
   process title), plus PSS and USS from ``psutil``'s ``memory_full_info`` (``smaps_rollup``) on
   every 5th sample, since it costs 5-15 ms per process. RSS counts a shared page (torch's
   libraries, Ray's shared-memory object store) in every process that maps it, so summed RSS
   overstates; PSS splits each shared page among its mappers and sums to the true total; USS is a
   process's private pages, what one more such process costs.
3. Capacity. Concurrent actors that fit: (available memory - driver - Ray system processes) / one
   actor's peak PSS (the tiny model loaded and trained). Virtual clients that fit: two short runs
   (1 round, 2 clients train, one actor, 3000 examples so each of 1000 clients gets two) with 10
   and 1000 virtual SuperNodes (200 would be within the noise), each in its own driver process (a
   child of this one, so earlier runs do not skew its heap); the growth of the driver's peak RSS
   per extra SuperNode prices a virtual client. But Flower's simulation engine polls every
   SuperNode's inbox every 0.1 s, and each poll walks all instructions in flight: that cost is
   timed on Flower's own in-memory link state (no Ray) and bounds the virtual clients first.

Notes
-----
The machine is shared and noisy; the load average is printed with the results. Ray runs its
workers at nice 15 (its ``worker_niceness``), so on a busy machine the actors, not the driver, lose
CPU to other work. Each simulation starts and stops its own Ray instance.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedft.cli import simulate_scenario  # noqa: E402
from fedft.config import Scenario, load_scenario  # noqa: E402
from fedft.report import read_metrics  # noqa: E402
from fedft.simulate import backend_config  # noqa: E402

SCENARIO = REPO / "simulations" / "default.toml"
SAMPLE_S = 0.2
PSS_EVERY = 5
BASE = ["partition.method='iid'"]
TIME_RUN = [*BASE, "federation.num_clients=10", "federation.num_rounds=4"]
SCALE_NODES = (10, 1000)  # 200 is within the driver's RSS noise (~1 MB) at a few kB per node
SCALE_TRAINED = 2  # clients that train in each scaling run
SCALE_EXAMPLES = 3000  # 1000 clients need >= 2 examples each (a train and an eval one)
MB = 1024**2


def scale_run(nodes: int) -> list[str]:
    """1 round, SCALE_TRAINED clients train, one actor: only the number of SuperNodes differs."""
    return [
        *BASE,
        f"data.num_examples={SCALE_EXAMPLES}",
        f"federation.num_clients={nodes}",
        "federation.num_rounds=1",
        f"federation.fraction_train={SCALE_TRAINED / nodes}",
        "simulation.cpus_per_client=2",
    ]


def pool_size(scenario: Scenario) -> int:
    """Concurrent ClientAppActors, as Flower's Ray backend sizes its pool on one node."""
    cfg = backend_config(scenario)
    return int(cfg["init_args"]["num_cpus"] / cfg["client_resources"]["num_cpus"])


def kind_of(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver"
    title = " ".join(proc.cmdline()) or proc.name()
    if "ClientAppActor" in title:
        return "actor"
    if title.startswith("ray::IDLE"):
        return "idle"  # a started Ray worker without a task or actor
    return "ray"  # gcs_server, raylet, dashboard, monitors, agents


@dataclass
class Peak:
    """Largest RSS, PSS, USS (bytes) seen, and the last CPU time (s) of one process or group."""

    rss: int = 0
    pss: int = 0
    uss: int = 0
    cpu: float = 0.0

    def update(self, rss: int, pss: int | None, uss: int | None) -> None:
        """Raise the peaks to a new reading (PSS and USS only when read)."""
        self.rss = max(self.rss, rss)
        if pss is not None and uss is not None:
            self.pss, self.uss = max(self.pss, pss), max(self.uss, uss)


@dataclass
class Sampler:
    """Samples the memory of a driver process and all its descendants on a background thread."""

    driver: psutil.Process
    procs: dict[int, Peak] = field(default_factory=dict)
    kinds: dict[int, str] = field(default_factory=dict)
    groups: dict[str, Peak] = field(default_factory=dict)  # peak of the per-sample sums by kind
    samples: int = 0
    pss_ok: bool = True
    thread_cpu_s: float = 0.0
    driver_cpu0: float = 0.0
    actor_nice: set[int] = field(default_factory=set)  # Ray renices its workers

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        cpu = self.driver.cpu_times()
        self.driver_cpu0 = cpu.user + cpu.system

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.thread_time()
        while not self._stop.is_set() and self._sample():
            self._stop.wait(SAMPLE_S)
        self.thread_cpu_s = time.thread_time() - started

    def _sample(self) -> bool:
        try:
            procs = [self.driver, *self.driver.children(recursive=True)]
        except psutil.Error:
            return False  # the driver has exited
        with_pss = self.pss_ok and self.samples % PSS_EVERY == 0
        sums = {k: Peak() for k in ("all", "driver", "actor", "idle", "ray")}
        for proc in procs:
            try:
                kind = kind_of(proc, self.driver.pid)
                rss = proc.memory_info().rss
                cpu = proc.cpu_times()
                if kind == "actor":
                    self.actor_nice.add(proc.nice())
                pss = uss = None
                if with_pss:
                    try:
                        full = proc.memory_full_info()
                        pss, uss = full.pss, full.uss
                    except (AttributeError, psutil.AccessDenied):
                        self.pss_ok = False
            except psutil.Error:
                continue  # exited between listing and reading
            if self.kinds.get(proc.pid) != "actor":  # a worker becomes an actor once
                self.kinds[proc.pid] = kind
            peak = self.procs.setdefault(proc.pid, Peak())
            peak.update(rss, pss, uss)
            peak.cpu = cpu.user + cpu.system
            for group in ("all", kind):
                sums[group].rss += rss
                sums[group].pss += pss or 0
                sums[group].uss += uss or 0
        for group, total in sums.items():
            self.groups.setdefault(group, Peak()).update(
                total.rss, total.pss if with_pss else None, total.uss if with_pss else None
            )
        self.samples += 1
        return True

    def peak_of(self, kind: str) -> Peak:
        """Largest RSS, PSS and USS over the processes of one kind (each maximised separately)."""
        out = Peak()
        for pid, peak in self.procs.items():
            if self.kinds[pid] == kind:
                out.update(peak.rss, peak.pss, peak.uss)
        return out

    def count(self, kind: str) -> int:
        """Processes of one kind seen."""
        return sum(1 for k in self.kinds.values() if k == kind)

    def cpu_s(self, kind: str) -> float:
        """CPU seconds (user + system) used during the run by the processes of one kind.

        The driver's count starts with the sampler and leaves out the sampler's own thread.
        """
        total = sum(p.cpu for pid, p in self.procs.items() if self.kinds[pid] == kind)
        if kind == "driver":
            total -= self.driver_cpu0
            if self.driver.pid == os.getpid():
                total -= self.thread_cpu_s
        return total


@dataclass
class Run:
    """One simulation: its metrics rows, file times, and memory samples."""

    label: str
    actors: int  # N, the pool size
    total_s: float
    startup_s: float
    shutdown_s: float
    rounds: list[dict]
    clients: list[dict]
    mem: Sampler


def collect(label: str, scenario: Scenario, run_dir: Path, t0: float, t1: float, mem: Sampler):
    rows = read_metrics(run_dir / "metrics.jsonl")
    trained = {r["round"] for r in rows if r["kind"] == "client"}
    expected = set(range(1, scenario.federation.num_rounds + 1))
    if trained != expected:
        missing = sorted(expected - trained)
        raise RuntimeError(f"{label}: no client reply recorded in round(s) {missing}; see above")
    started = (run_dir / "config.toml").stat().st_mtime  # RunRecorder.__init__
    last_round = (run_dir / "metrics.jsonl").stat().st_mtime  # end of the last global eval
    return Run(
        label=label,
        actors=pool_size(scenario),
        total_s=t1 - t0,
        startup_s=started - t0,
        shutdown_s=t1 - last_round,
        rounds=[r for r in rows if r["kind"] == "round"],
        clients=[r for r in rows if r["kind"] == "client"],
        mem=mem,
    )


def wait_for_no_children(timeout: float = 20.0) -> None:
    """Let the previous Ray instance finish exiting, so it is not sampled in the next run."""
    deadline = time.monotonic() + timeout
    me = psutil.Process()
    while time.monotonic() < deadline:
        try:
            alive = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            alive = [None]  # one exited while listed: look again
        if not alive:
            return
        time.sleep(0.25)


def run_in_process(label: str, overrides: list[str], work: Path) -> Run:
    scenario = load_scenario(SCENARIO, overrides)
    run_dir = work / label
    wait_for_no_children()
    print(f"[{label}] {' '.join(overrides)}", file=sys.stderr, flush=True)
    with Sampler(psutil.Process()) as mem:
        t0 = time.time()
        simulate_scenario(scenario, run_dir)
        t1 = time.time()
    return collect(label, scenario, run_dir, t0, t1, mem)


def run_in_child(label: str, overrides: list[str], work: Path, script: str = __file__) -> Run:
    """Run in a fresh driver: ``script --child RUN_DIR OVERRIDES`` (this file's by default)."""
    scenario = load_scenario(SCENARIO, overrides)
    run_dir = work / label
    wait_for_no_children()
    print(f"[{label}] fresh driver process: {' '.join(overrides)}", file=sys.stderr, flush=True)
    log_path = work / f"{label}.log"
    cmd = [sys.executable, script, "--child", str(run_dir), *overrides]
    with log_path.open("w") as log:
        t0 = time.time()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        with Sampler(psutil.Process(child.pid)) as mem:
            code = child.wait()
        t1 = time.time()
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{label} failed with exit code {code}:\n" + "\n".join(tail))
    return collect(label, scenario, run_dir, t0, t1, mem)


@dataclass
class Phase:
    """Summed times of some rounds (or a whole run) of one configuration."""

    rounds: int
    wall: float
    train: float
    agg: float
    eval: float
    n: int

    @property
    def critical_train(self) -> float:
        """Least training time on the critical path: N actors, perfect balance."""
        return self.train / self.n

    @property
    def overhead(self) -> float:
        """Wall time not spent in critical-path training, aggregation or global eval."""
        return self.wall - self.critical_train - self.agg - self.eval


def phase(run: Run, rounds: list[int]) -> Phase:
    rows = [r for r in run.rounds if r["round"] in rounds]
    return Phase(
        rounds=len(rows),
        wall=sum(r["wall_s"] for r in rows),
        train=sum(c["train_s"] for c in run.clients if c["round"] in rounds),
        agg=sum(r.get("aggregate_s", 0.0) for r in rows),
        eval=sum(r["eval_s"] for r in rows),
        n=run.actors,
    )


def time_rows(run: Run) -> list[list[str]]:
    last = max(r["round"] for r in run.rounds)
    whole = phase(run, list(range(last + 1)))
    whole.wall = run.total_s
    parts = [
        ("round 1", phase(run, [1]), 1),
        (f"rounds 2-{last}, per round", phase(run, list(range(2, last + 1))), last - 1),
        ("whole run", whole, 1),
    ]
    rows = []
    for name, p, per in parts:
        rows.append(
            [
                f"{run.label}: {name}",
                str(run.actors),
                f"{p.wall / per:.2f}",
                f"{p.train / per:.2f}",
                f"{p.critical_train / per:.2f}",
                f"{p.agg / per:.3f}",
                f"{p.eval / per:.2f}",
                f"{p.overhead / per:.2f}",
                f"{p.overhead / p.wall:.0%}",
            ]
        )
    r0 = phase(run, [0])
    rows.append(
        [
            f"{run.label}: start {run.startup_s:.1f} + round 0 {r0.wall:.1f}"
            f" + stop {run.shutdown_s:.1f}",
            "",
            f"{run.startup_s + r0.wall + run.shutdown_s:.2f}",
            "0",
            "0",
            "0",
            f"{r0.eval:.2f}",
            f"{run.startup_s + r0.wall - r0.eval + run.shutdown_s:.2f}",
            "",
        ]
    )
    return rows


def approx(n: float) -> str:
    """A large count, rounded for reading: 8.9 million, 560 thousand, 177."""
    if n >= 1e6:
        return f"~{n / 1e6:.1f} million"
    if n >= 1e4:
        return f"~{n / 1e3:.0f} thousand"
    return f"{n:,.0f}"


def mb(x: float) -> str:
    return f"{x / MB:,.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def available_memory() -> int:
    """MemAvailable, capped by a cgroup (v2 or v1) memory limit if one is set."""
    avail = psutil.virtual_memory().available
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < psutil.virtual_memory().total:
            avail = min(avail, int(limit) - usage)
    return avail


def import_seconds() -> float:
    """Wall time of a fresh interpreter importing the ClientApp, as each new Ray actor does."""
    cmd = [sys.executable, "-c", "import clients.app"]
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def poller_cost(nodes: int = 400, calls: int = 20) -> tuple[float, float] | None:
    """Cost of Flower's simulation inbox poller: (s per call, s per in-flight message and call).

    ``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`` calls
    ``state.get_message_ins(node_id, limit=1)`` for every SuperNode, then waits 0.1 s, for the
    whole run; each call walks every stored instruction (re-checking its expiry) until one is for
    that node. Instructions stay stored until the server pulls their replies, so a sweep costs
    about ``nodes * (a + in_flight * b)``. Measured on Flower 1.39's own ``InMemoryLinkState``,
    set up as ``run_simulation`` sets it up (no Ray), with ``nodes`` SuperNodes and 0 or ``nodes``
    delivered instructions; ``None`` if these internals moved. This is Flower's own lookup;
    ``fedft simulate`` replaces it by an index (:mod:`fedft.flower_inbox`, ``docs/scale.md``).
    """
    try:
        from flwr.app import ConfigRecord, Message, RecordDict
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.proto.task_pb2 import Task
        from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
        from flwr.server.superlink.linkstate import LinkStateFactory
        from flwr.server.superlink.linkstate.in_memory_linkstate import (
            InMemoryLinkState,
            RunRecord,
        )
        from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
        from flwr.supercore.object_store import ObjectStoreFactory
        from flwr.supercore.run import Run as FlwrRun
        from flwr.supercore.task_identity import TaskIdentity
        from flwr.superlink.federation import NoOpFederationManager
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid

        from fedft.flower_inbox import FLOWER_METHODS

        # Flower's own walk, even after `fedft simulate` indexed the inboxes in this process
        flower_get = FLOWER_METHODS.get("get_message_ins", InMemoryLinkState.get_message_ins)

        def per_call(in_flight: int) -> float:
            factory = LinkStateFactory(
                FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
            )
            run = FlwrRun.create_empty(run_id=1)
            run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
            TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
            TaskIdentity.node_id = SUPERLINK_NODE_ID
            state = factory.state()
            state.run_ids[1] = RunRecord(run=run)
            state.task_store[1] = Task(task_id=1, run_id=1)
            grid = InMemoryGrid(state_factory=factory)
            grid.set_run(run)
            node_ids = list(_register_nodes(nodes, factory))
            content = RecordDict({"config": ConfigRecord({"server-round": 1})})
            grid.push_messages([Message(content, n, "train") for n in node_ids[:in_flight]])
            for n in node_ids:  # deliver them all: now they wait for replies, as in a round
                flower_get(state, node_id=n, limit=1)
            started = time.perf_counter()
            for n in node_ids[:calls]:
                flower_get(state, node_id=n, limit=1)
            return (time.perf_counter() - started) / calls

        base = min(per_call(0) for _ in range(3))
        full = min(per_call(nodes) for _ in range(2))
    except (ImportError, AttributeError, KeyError, RuntimeError, TypeError, ValueError):
        return None
    return base, max(full - base, 0.0) / nodes


def eval_threads(repeats: int = 2) -> dict[int, tuple[float, float]]:
    """Fastest and slowest global eval of the time runs' scenario here: 1 thread, one per CPU.

    The server evaluates in the driver beside the actors; ``simulate`` sets the driver's torch to
    one thread, clients use ``simulation.threads_per_client``; torch's own default is one thread
    per core. Thread counts are interleaved; torch's setting is restored afterwards.
    """
    import torch

    from fedft.data import encode_examples
    from fedft.models import load_peft_model
    from fedft.task import federated_data
    from fedft.train import evaluate

    scenario = load_scenario(SCENARIO, TIME_RUN)
    model, tokenizer = load_peft_model(scenario.model, scenario.lora, scenario.run.seed)
    data = scenario.data
    examples = list(federated_data(scenario).global_eval)
    encoded = encode_examples(
        examples, tokenizer, data.max_length, template=data.template, chat=data.chat
    )
    default = torch.get_num_threads()
    times: dict[int, list[float]] = {1: [], os.cpu_count() or 1: []}
    try:
        for _ in range(repeats):
            for threads, seen in times.items():
                torch.set_num_threads(threads)
                started = time.perf_counter()
                evaluate(model, encoded, scenario.train.batch_size * 4, torch.device("cpu"))
                seen.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(default)
    return {n: (min(seen), max(seen)) for n, seen in times.items()}


def report(
    runs: dict[str, Run],
    avail: int,
    load0: float,
    import_s: float,
    evals: dict[int, tuple[float, float]],
    driver_threads: int,
) -> None:
    par, seq, small, large = runs["parallel"], runs["sequential"], runs["small"], runs["large"]
    mem = par.mem
    actor = mem.peak_of("actor")
    driver, ray, idle = mem.groups["driver"], mem.groups["ray"], mem.groups["idle"]
    tr_par = [c["train_s"] for c in par.clients if c["round"] >= 2]
    tr_seq = [c["train_s"] for c in seq.clients if c["round"] >= 2]
    mean_par, mean_seq = sum(tr_par) / len(tr_par), sum(tr_seq) / len(tr_seq)

    print("\n=== fedft simulation overhead: tiny model, simulations/default.toml ===")
    print(
        f"machine: {psutil.cpu_count()} CPUs, {avail / 1e9:.1f} GB available; load average "
        f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end (shared: times are noisy)"
    )
    print(f"time runs: {' '.join(TIME_RUN)}; sequential adds simulation.cpus_per_client=2\n")
    header = ["TIME (s)", "N", "wall", "sum train", "/N", "aggregate", "eval", "overhead", "share"]
    print(table(header, time_rows(par) + time_rows(seq)))
    print(
        f"mean train_s per client, rounds 2+: parallel {mean_par:.2f} s, sequential "
        f"{mean_seq:.2f} s (ratio {mean_par / mean_seq:.2f}; > 1: concurrent actors slow each "
        f"other)\nClientAppActors seen: parallel {par.mem.count('actor')} (N={par.actors}), "
        f"sequential {seq.mem.count('actor')} (N={seq.actors}), at nice "
        f"{','.join(map(str, sorted(par.mem.actor_nice)))} (the driver: {psutil.Process().nice()});"
        f" a fresh interpreter importing clients.app alone: {import_s:.1f} s"
    )
    steady = range(2, max(r["round"] for r in seq.rounds) + 1)
    seq_over = phase(seq, list(steady))
    per_client = seq_over.overhead / sum(1 for c in seq.clients if c["round"] in steady)
    print(
        "the server's global eval alone in this process, fastest-slowest of 2: "
        + ", ".join(f"{n} torch thread(s) {lo:.2f}-{hi:.2f} s" for n, (lo, hi) in evals.items())
        + f"; the runs' driver used {driver_threads}"
    )
    print(
        f"sequential steady rounds: overhead / clients = {per_client * 1e3:.0f} ms per client, vs"
        f" {mean_seq * 1e3:.0f} ms of training ({seq.rounds[-1].get('steps', 0):.0f} local steps)\n"
    )

    n_small = small.mem.procs[small.mem.driver.pid]
    n_large = large.mem.procs[large.mem.driver.pid]
    extra = SCALE_NODES[1] - SCALE_NODES[0]
    per_node_rss = (n_large.rss - n_small.rss) / extra
    per_node_uss = (n_large.uss - n_small.uss) / extra
    n_act = max(mem.count("actor"), 1)
    cpu_all = sum(mem.cpu_s(k) for k in ("driver", "actor", "idle", "ray"))
    pss_note = "" if mem.pss_ok else " (PSS unavailable: 0)"

    def row(label: str, peak: Peak, cpu: str = "") -> list[str]:
        return [label, mb(peak.rss), mb(peak.pss), mb(peak.uss), cpu]

    mrows = [
        row("all processes, parallel run (sum)", mem.groups["all"], f"{cpu_all:.1f}"),
        row("driver (ServerApp, SuperLink, Ray backend)", driver, f"{mem.cpu_s('driver'):.1f}"),
        row("one ClientAppActor (tiny model loaded)", actor, f"{mem.cpu_s('actor') / n_act:.1f}"),
        row(f"Ray daemons and agents ({mem.count('ray')}, sum)", ray, f"{mem.cpu_s('ray'):.1f}"),
        row(f"idle Ray workers ({mem.count('idle')}, sum)", idle, f"{mem.cpu_s('idle'):.1f}"),
    ]
    for run, nodes, peak in ((small, SCALE_NODES[0], n_small), (large, SCALE_NODES[1], n_large)):
        mrows.append(row(f"driver, {nodes} SuperNodes, 1 round ({run.total_s:.0f} s)", peak))
    growth = [f"{per_node_rss / 1024:.1f}", "", f"{per_node_uss / 1024:.1f}", ""]
    mrows.append(["driver growth per extra SuperNode (kB)", *growth])
    print(table([f"PEAK MEMORY (MB){pss_note}", "RSS", "PSS", "USS", "CPU s"], mrows))
    print(
        f"CPU s: used during the parallel run (clients' train_s, wall time, sum to "
        f"{sum(c['train_s'] for c in par.clients):.1f} s); sampler: {mem.samples} samples, "
        f"{mem.thread_cpu_s:.1f} CPU-s ({mem.thread_cpu_s / par.total_s:.1%} of a core)\n"
    )

    base_pss = driver.pss + ray.pss + idle.pss  # the federation without its actors
    actors_fit = int((avail - base_pss) // actor.pss) if actor.pss else 0
    actors_fit_rss = int((avail - driver.rss - ray.rss - idle.rss) // actor.rss)
    left = avail - base_pss - par.actors * actor.pss
    resolution = 2 * MB / extra  # the driver's peak RSS repeats to about 1-2 MB
    clients_fit = int(left // max(per_node_rss, resolution))
    bound = "" if per_node_rss > resolution else "at least "
    print(f"CAPACITY ({avail / 1e9:.1f} GB available)")
    print(
        f"  concurrent ClientAppActors: memory fits {actors_fit} ({actors_fit_rss} counting RSS);"
        f" Flower starts floor(CPUs / cpus_per_client) = {par.actors}"
        f" -> limit: {'CPU' if par.actors <= actors_fit else 'memory'}"
    )
    print(
        f"  virtual SuperNodes: memory fits {bound}{approx(clients_fit)} "
        f"(driver +{max(per_node_rss, 0) / 1024:.1f} kB RSS each; noise ~"
        f"{resolution / 1024:.1f} kB)"
    )
    cost = poller_cost()
    if cost is None:
        print("  Flower's inbox poller: internals changed, not measured")
        return
    a, b = cost

    def sweep(nodes: int, in_flight: int) -> float:
        return nodes * (a + in_flight * b)

    def saturating(fraction: float) -> float:
        """SuperNodes v at which a sweep takes the 0.1 s poll interval: v a + f v^2 b = 0.1."""
        if b <= 0:
            return math.inf
        return (-a + math.sqrt(a * a + 4 * fraction * b * 0.1)) / (2 * fraction * b)

    full_at, tenth_at = saturating(1.0), saturating(0.1)
    print(
        "  Flower's inbox poller (a driver thread, holding the GIL): every 0.1 s it asks every"
        " SuperNode's\n    inbox, and each ask walks every instruction still awaiting its reply:"
        f" {a * 1e6:.1f} us per SuperNode\n    + {b * 1e6:.2f} us per SuperNode and instruction in"
        f" flight. One sweep: {sweep(10, 10) * 1e3:.2f} ms at 10 SuperNodes\n    all training,"
        f" {sweep(1000, 2) * 1e3:.1f} ms at 1000 with 2 training, {sweep(1000, 1000):.2f} s at"
        " 1000 all training (extrapolated)"
    )
    print(
        "  -> limit on virtual clients: that poller, not memory. Its sweep grows as SuperNodes^2 x"
        f" participation\n     and equals the 0.1 s interval (half a core busy, taken from the"
        f" actors) at ~{full_at:,.0f}\n     SuperNodes when all train, ~{tenth_at:,.0f} when 10%"
        f" train. Round time binds anyway: {SCALE_NODES[1]} clients\n     training take >="
        f" {SCALE_NODES[1]} x {mean_seq:.2f} s / {par.actors} ="
        f" {SCALE_NODES[1] * mean_seq / par.actors:.0f} s per round on {par.actors} actors"
        " (sequential mean train_s)."
    )


def definitions() -> None:
    print(
        "\nDefinitions: wall = metrics.jsonl wall_s (end of previous global eval to end of this "
        "one;\n  whole run: the simulate() call). sum train = sum of the clients' train_s (inside "
        "train_local).\n  /N = sum train / N, N = concurrent ClientAppActors = floor(Ray CPUs / "
        "cpus_per_client):\n  the least training time on the critical path. overhead = wall - "
        "sum train / N - aggregate\n  - eval (exact for N = 1, an upper bound for N > 1); share "
        "= overhead / wall. It holds\n  message passing, Ray dispatch, (de)serialisation, client "
        "set-up and local eval, record\n  validation, metrics writing. Round 1 includes the "
        "actors' start (fresh interpreters import\n  torch/transformers/peft/flwr). start = "
        "simulate() call to RunRecorder start (Ray, Flower,\n  server model load); stop = last "
        "global eval to return (adapter, plot, Ray shutdown).\n  RSS counts shared pages in every "
        "process (sums overstate); PSS shares them out (sums are\n  true); USS = private pages "
        "(the cost of one more such process). Peaks of sums are taken\n  per sample (RSS every "
        f"{SAMPLE_S} s, PSS/USS every {SAMPLE_S * PSS_EVERY:.0f} s). Capacity: (available - "
        "driver - Ray\n  processes) / actor PSS; virtual clients: what is left after the actors "
        "/ driver growth\n  per SuperNode (1-round runs, 2 clients train, one actor, fresh driver "
        "process each)."
    )


def child_main(run_dir: str, overrides: list[str]) -> None:
    simulate_scenario(load_scenario(SCENARIO, overrides), Path(run_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child[0], args.child[1:])
        return
    # Imported up front so the first run's start-up does not include them.
    import flwr.simulation  # noqa: F401

    import clients.app  # noqa: F401
    import server.app  # noqa: F401

    load0 = os.getloadavg()[0]
    avail = available_memory()
    started = time.monotonic()
    import_s = import_seconds()
    with tempfile.TemporaryDirectory(prefix="fedft-overhead-") as tmp:
        work = Path(tmp)
        runs = {
            "parallel": run_in_process("parallel", TIME_RUN, work),
            "sequential": run_in_process(
                "sequential", [*TIME_RUN, "simulation.cpus_per_client=2"], work
            ),
            "small": run_in_child(f"nodes{SCALE_NODES[0]}", scale_run(SCALE_NODES[0]), work),
            "large": run_in_child(f"nodes{SCALE_NODES[1]}", scale_run(SCALE_NODES[1]), work),
        }
        import torch

        report(runs, avail, load0, import_s, eval_threads(), torch.get_num_threads())
        definitions()
    print(f"\n(benchmark took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
