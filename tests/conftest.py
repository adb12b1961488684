"""Shared test setup and fixtures.

- One torch thread (the machines are small and shared; 2 threads contend).
- Flower's task identity as a ServerApp process has it before it builds messages: set once, before
  collection, because hostile-reply corpora build their reply messages at import time.
- Session fixtures for what many tests build and only read: the default scenario, its edge bundle.

Tests that start real simulations, processes or exports carry ``@pytest.mark.integration``:
``pytest -m "not integration"`` (``make test-fast``) runs the rest.
"""

import os
from pathlib import Path

os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = ROOT / "simulations" / "default.toml"


def pytest_configure(config):
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture(scope="session")
def default_scenario():
    """``simulations/default.toml``, loaded once (a frozen Scenario: tests only read it)."""
    from fedft.config import load_scenario

    return load_scenario(DEFAULT_SCENARIO)


@pytest.fixture(scope="session")
def edge_bundle(default_scenario, tmp_path_factory):
    """The default scenario's edge bundle (ONNX graphs, checkpoint, tokenizer), exported once."""
    from fedft.edge.cache import ensure_bundle

    return ensure_bundle(default_scenario, tmp_path_factory.mktemp("edge-bundle"))
