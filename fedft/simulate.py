"""Run a scenario on Flower's simulation engine (Ray backend) on this machine."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedft.config import Scenario

log = logging.getLogger("fedft")


def backend_config(scenario: Scenario) -> dict:
    """Ray resources: each virtual client gets ``simulation.cpus_per_client`` CPUs."""
    return {
        "client_resources": {"num_cpus": scenario.simulation.cpus_per_client, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": True,
        },
    }


def simulate(scenario: Scenario, run_dir: Path, verbose: bool = False) -> Path:
    """Run ``scenario`` with one virtual SuperNode per client; return the run folder."""
    # Imported here: `fedft --help` and config errors should not pay for Flower's and Ray's import.
    import torch
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.app import make_server_app

    # The driver evaluates and aggregates beside the client actors: one thread avoids
    # oversubscribing small machines (2 threads were 5-20x slower than 1 on 2 busy cores).
    torch.set_num_threads(1)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    # Ray workers inherit this environment: keep library deprecation chatter out of the progress.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    log.info(
        "simulating %s: %d clients, %d rounds, strategy %s -> %s",
        scenario.run.name,
        scenario.federation.num_clients,
        scenario.federation.num_rounds,
        scenario.federation.strategy,
        run_dir,
    )
    run_simulation(
        server_app=make_server_app(scenario, run_dir),
        client_app=client_app,
        num_supernodes=scenario.federation.num_clients,
        backend_config=backend_config(scenario),
        verbose_logging=verbose,
    )
    if not ((run_dir / "adapter").is_dir() or (run_dir / "zo_weights.safetensors").is_file()):
        raise RuntimeError(f"the simulation ended without writing its output into {run_dir}")
    return run_dir
