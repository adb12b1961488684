"""fedft's Flower ServerApp: ``flwr run .`` runs the scenario named in the run config."""

from __future__ import annotations

import shlex
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedft.config import Scenario, load_scenario
from fedft.console import console_logging, quiet_flower_app
from fedft.run_folder import default_run_dir
from server.federation import run_federation

REPO_ROOT = Path(__file__).resolve().parent.parent


def scenario_from_run_config(run_config: Mapping[str, Any]) -> Scenario:
    """Build the scenario from Flower's run config (``[tool.flwr.app.config]`` plus ``-c``).

    ``scenario`` names a scenario file (relative to the working directory, else to the app's
    folder); ``set`` holds space-separated ``section.key=value`` overrides, e.g.
    ``flwr run . -c 'set="federation.num_rounds=2 train.lr=1e-3"'``.
    """
    name = str(run_config.get("scenario", ""))
    path = Path(name) if name else None
    if path is not None and not path.is_file() and (REPO_ROOT / path).is_file():
        path = REPO_ROOT / path
    return load_scenario(path, shlex.split(str(run_config.get("set", ""))))


def make_server_app(
    scenario: Scenario,
    run_dir: Path,
    stop: threading.Event | None = None,
    done: threading.Event | None = None,
) -> ServerApp:
    """A ServerApp bound to an already validated scenario (used by ``fedft simulate``).

    Setting ``stop`` ends the run while it waits for replies (see :func:`run_federation`);
    ``done`` is set when the ServerApp returns or raises.
    """
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            run_federation(grid, scenario, run_dir, stop)
        finally:
            if done is not None:
                done.set()

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run .``: scenario from the run config, run folder under runs/."""
    quiet_flower_app(context.run_config)  # `-c verbose=true` shows library and Flower notices
    console_logging()
    scenario = scenario_from_run_config(context.run_config)
    run_federation(grid, scenario, default_run_dir(scenario))
