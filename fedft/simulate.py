"""Run a scenario on Flower's simulation engine (Ray backend) on this machine.

The apps come in as arguments: the library imports neither ``server/`` nor ``clients/``; the
command line (:mod:`fedft.cli`) passes ``server.app.make_server_app`` and ``clients.app.app``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from fedft.config import Scenario
from fedft.console import mark_simulation_workers, plain_flower_logs, quiet_libraries
from fedft.errors import Interrupted, SimulationBackendError
from fedft.flower_inbox import index_inboxes
from fedft.strategies import MODULE_WEIGHT_FILES

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

log = logging.getLogger("fedft")

ServerAppFactory = Callable[[Scenario, Path, threading.Event, threading.Event], "ServerApp"]
"""Builds the run's ServerApp from (scenario, run folder, stop event, server-done event)."""


def gpus_per_client(scenario: Scenario, num_gpus: int, num_cpus: int) -> float:
    """Ray's ``num_gpus`` for each virtual client, given this machine's GPUs and CPUs.

    ``simulation.gpus_per_client = "auto"`` shares the GPUs evenly among the clients that run at
    once (at most one GPU each); a number is taken as it is. Without a GPU it is 0: the clients
    run on the CPU.
    """
    setting = scenario.simulation.gpus_per_client
    if num_gpus == 0:
        if setting not in ("auto", 0):
            log.warning(
                "simulation.gpus_per_client = %s, but no CUDA GPU is here: clients use the CPU",
                setting,
            )
        return 0.0
    if setting != "auto":
        return float(setting)
    concurrent = max(1, int(num_cpus / scenario.simulation.cpus_per_client))
    concurrent = min(concurrent, scenario.federation.num_clients)
    return min(1.0, num_gpus / concurrent)


def backend_config(scenario: Scenario, num_gpus: int = 0) -> dict:
    """Ray resources: ``simulation.cpus_per_client`` CPUs a client, and a share of the GPUs.

    ``num_gpus`` is the number of CUDA GPUs here; see :func:`gpus_per_client` for the share.
    With ``simulation.ray_address`` set, Ray attaches to that running cluster (``init_args``
    go to ``ray.init``, which takes no CPU count then: the cluster's nodes have theirs), and
    Flower starts floor(CPUs / cpus_per_client) client actors on each of its nodes.
    """
    num_cpus = os.cpu_count() or 1
    # Ray makes floor(num_cpus / cpus_per_client) workers: no more than there are clients.
    needed = math.ceil(scenario.federation.num_clients * scenario.simulation.cpus_per_client)
    address = scenario.simulation.ray_address
    init_args: dict = (
        {"address": address} if address else {"num_cpus": max(1, min(num_cpus, needed))}
    )
    return {
        "client_resources": {
            "num_cpus": scenario.simulation.cpus_per_client,
            "num_gpus": gpus_per_client(scenario, num_gpus, num_cpus),
        },
        "init_args": {
            **init_args,
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": True,
        },
    }


def cuda_device_count() -> int:
    """CUDA GPUs torch sees here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# After Ctrl-C the server stops at its next wait for replies; this bounds a round's evaluation.
STOP_WAIT_S = 30.0


def simulate(
    scenario: Scenario,
    run_dir: Path,
    make_server_app: ServerAppFactory,
    client_app: ClientApp,
    verbose: bool = False,
) -> Path:
    """Run ``scenario`` with one virtual SuperNode per client; return the run folder.

    ``make_server_app`` builds the ServerApp (it sets ``server_done`` when the server stops and
    stops at ``stop``); ``client_app`` is the ClientApp every virtual SuperNode runs.

    Ctrl-C (SIGINT) stops the clients and Ray, lets the server stop where it waits for replies,
    and raises :class:`~fedft.errors.Interrupted`: the folder keeps its last completed round.
    """
    # Imported here: `fedft --help` and config errors should not pay for Flower's and Ray's import.
    import torch
    from flwr.simulation import run_simulation

    # The driver evaluates and aggregates beside the client actors: one thread avoids
    # oversubscribing small machines (2 threads were 5-20x slower than 1 on 2 busy cores).
    torch.set_num_threads(1)
    # Ray's workers inherit this environment (and quiet themselves: see clients.app).
    quiet_libraries(verbose)  # again: importing flwr.simulation put its warning filter first
    mark_simulation_workers(verbose)
    plain_flower_logs(verbose)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    index_inboxes()  # Flower's inbox poller is O(SuperNodes x instructions) without it
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in a redirected log
    log.info(
        "simulating %s: %d clients, %d rounds, strategy %s -> %s",
        scenario.run.name,
        scenario.federation.num_clients,
        scenario.federation.num_rounds,
        scenario.federation.strategy,
        run_dir,
    )
    stop, server_done = threading.Event(), threading.Event()
    held: list[logging.LogRecord] = []
    try:
        with _stop_on_ctrl_c(stop), _hold_runtime_errors(held, verbose):
            run_simulation(
                server_app=make_server_app(scenario, run_dir, stop, server_done),
                client_app=client_app,
                num_supernodes=scenario.federation.num_clients,
                backend_config=backend_config(scenario, cuda_device_count()),
                verbose_logging=verbose,
            )
    except KeyboardInterrupt:
        # Flower has stopped its workers and Ray by now (unless Ctrl-C came while Ray started);
        # the server thread notices `stop` where it waits for replies, so nothing it writes is
        # left half-done.
        _shutdown_ray()
        server_done.wait(STOP_WAIT_S)
        raise Interrupted from None
    except Exception as err:
        # Without Flower's runtime no node replies: the server thread would wait out
        # federation.round_timeout_s. It stops at its wait for replies, as after Ctrl-C.
        stop.set()
        _shutdown_ray()
        server_done.wait(STOP_WAIT_S)
        cause = backend_failure(err)
        if cause is None:
            for record in held:  # not the runtime: show what Flower said
                logging.getLogger("flwr").handle(record)
            raise
        raise SimulationBackendError(
            f"the simulation backend (Ray) failed, no client can run: {cause}"
        ) from None
    weights = any((run_dir / name).is_file() for name in MODULE_WEIGHT_FILES)
    if not ((run_dir / "adapter").is_dir() or weights):
        raise RuntimeError(f"the simulation ended without writing its output into {run_dir}")
    return run_dir


RUNTIME_CRASHED = "Simulation Runtime crashed."  # flwr.server.superlink.fleet.vce.vce_api


def backend_failure(err: BaseException) -> str | None:
    """What broke, if ``err`` (from ``run_simulation``) says Flower's simulation runtime died.

    Flower raises ``RuntimeError("Simulation Runtime crashed.")`` when its backend (Ray) fails
    to start or to build its actors, wrapped in another ``RuntimeError``. Returns the innermost
    cause as one line (``"ValueError: ..."``), or None for any other error.
    """
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if not any(str(e) == RUNTIME_CRASHED for e in chain):
        return None
    root = chain[-1]
    text = " ".join(str(root).split())  # one line
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


@contextlib.contextmanager
def _hold_runtime_errors(held: list[logging.LogRecord], verbose: bool) -> Iterator[None]:
    """Hold back what Flower logs when its runtime dies (its error lines and tracebacks).

    Flower logs them from ``run_api`` and ``_main_loop`` before it raises; :func:`simulate` then
    prints one line instead, or hands the records back to Flower's logger if the error is another.
    Verbose runs show them as they come.
    """

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and record.funcName in ("run_api", "_main_loop"):
            held.append(record)
            return False
        return True

    flwr_log = logging.getLogger("flwr")
    if not verbose:
        flwr_log.addFilter(hold)
    try:
        yield
    finally:
        flwr_log.removeFilter(hold)


def _shutdown_ray() -> None:
    """Stop this process's Ray cluster, if one is still up."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@contextlib.contextmanager
def _stop_on_ctrl_c(stop: threading.Event) -> Iterator[None]:
    """On the first SIGINT: set ``stop``, mute Flower, ignore further SIGINTs, raise."""

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        stop.set()
        logging.getLogger("flwr").setLevel(logging.CRITICAL + 1)  # its workers' dying words
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if not stop.is_set():
            signal.signal(signal.SIGINT, previous)
