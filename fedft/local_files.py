"""Files a scenario names, checked on the machine that reads them (before anything heavy runs).

Kept out of :mod:`fedft.config`, which stays a pure schema: a GGUF path is resolved through
:mod:`fedft.models` (and its torch and transformers imports) only when a scenario names one.
"""

from __future__ import annotations

from pathlib import Path

from fedft.config import Scenario
from fedft.model_folder import check_model_folder
from fedft.schema import check


def check_local_files(scenario: Scenario) -> None:
    """Check that files the scenario names exist here (called where they are read).

    Raises
    ------
    fedft.errors.ConfigError
        Naming ``model.path`` or ``data.path`` when the folder or file is not there.
    """
    model, data = scenario.model, scenario.data
    if model.source == "hf":
        check_model_folder(Path(model.path))
    if model.source == "gguf":
        from fedft.models import resolve_gguf  # heavy imports: only when a GGUF is named

        gguf = resolve_gguf(model.path)
        check(gguf.is_file(), "model.path", f"no GGUF file at {gguf}")
    if data.source in ("jsonl", "csv"):
        check(Path(data.path).is_file(), "data.path", f"no data file at {data.path}")
    if scenario.eval.tensorboard:
        import importlib.util

        check(
            importlib.util.find_spec("tensorboardX") is not None,
            "eval.tensorboard",
            "needs tensorboardX: pip install 'fedft[tensorboard]'",
        )
    if data.source == "hf":
        check(Path(data.path).exists(), "data.path", f"no dataset folder or file at {data.path}")
