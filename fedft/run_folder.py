"""Where a run writes, checked before anything heavy starts; what a resumed run must match.

Nothing here imports torch, transformers, Flower or Ray: the command line calls these checks
first, so a bad ``--out`` or a resume with the wrong scenario fails in well under a second.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fedft.config import Scenario, read_toml
from fedft.errors import ConfigError


def default_run_dir(scenario: Scenario) -> Path:
    """``<output_dir>/<name>-<timestamp>``, unique per start."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(scenario.run.output_dir) / f"{scenario.run.name}-{stamp}"


def check_writable_folder(folder: Path, key: str) -> None:
    """Check that ``folder`` is, or can be made, a writable folder; ``key`` names the setting.

    Nothing is created: the nearest existing ancestor must be a writable folder.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(key, f"{folder} is a file, not a folder")
    ancestor = folder
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ConfigError(key, f"{ancestor} is a file, so {folder} cannot be made")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{ancestor} is not writable, so {folder} cannot be made")


def stored_config(scenario: Scenario) -> dict[str, Any]:
    """The scenario as the run folder records it (without the resume pointer)."""
    raw = scenario.to_dict()
    raw["run"].pop("resume_dir", None)
    return raw


def check_same_scenario(scenario: Scenario, run_dir: Path) -> None:
    """A resumed run must use the scenario it started with (the resume pointer aside)."""
    stored = run_dir / "config.toml"
    if not stored.is_file():
        raise ConfigError("run.resume_dir", f"{run_dir} is not a fedft run folder (no config.toml)")
    before = stored_config(Scenario.from_dict(read_toml(stored)))
    now = stored_config(scenario)
    for section, values in now.items():
        for key, value in values.items() if isinstance(values, dict) else [("", values)]:
            old = before.get(section, {}).get(key) if key else before.get(section)
            if old != value:
                name = f"{section}.{key}" if key else section
                raise ConfigError(
                    "run.resume_dir",
                    f"{run_dir} ran with {name} = {old!r}, not {value!r}: resume with its scenario",
                )
