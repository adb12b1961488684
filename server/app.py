"""fedft's Flower ServerApp: ``flwr run .`` runs the scenario named in the run config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedft.config import Scenario, read_toml, set_values
from server.federation import default_run_dir, run_federation

REPO_ROOT = Path(__file__).resolve().parent.parent


def scenario_from_run_config(run_config: Mapping[str, Any]) -> Scenario:
    """Build the scenario from Flower's flat run config.

    ``scenario`` names a scenario file (relative to the working directory, else to the app's
    folder); every other key is a dotted scenario key that overrides the file, e.g.
    ``flwr run . -c 'federation.num_rounds=2'``.
    """
    raw: dict[str, Any] = {}
    name = str(run_config.get("scenario", ""))
    if name:
        path = Path(name)
        if not path.is_file() and (REPO_ROOT / path).is_file():
            path = REPO_ROOT / path
        raw = read_toml(path)
    overrides = [(key.split("."), value) for key, value in run_config.items() if key != "scenario"]
    return Scenario.from_dict(set_values(raw, overrides))


def make_server_app(scenario: Scenario, run_dir: Path) -> ServerApp:
    """A ServerApp bound to an already validated scenario (used by ``fedft simulate``)."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, scenario, run_dir)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run .``: scenario from the run config, run folder under runs/."""
    scenario = scenario_from_run_config(context.run_config)
    run_federation(grid, scenario, default_run_dir(scenario))
