"""Scaffolding for integration tests: `fedft simulate` in a fresh process, and shared settings.

A simulation's cost is mostly its start (the command's imports and model load, Ray, every client
actor's imports), so runs that several tests can read are started once a session by the fixtures
in ``tests/integration/conftest.py``; each test reads the run folder.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCENARIO = ROOT / "simulations" / "default.toml"


def command(overrides, *extra, scenario=DEFAULT_SCENARIO):
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(scenario)]
    for o in overrides:
        args += ["--set", o]
    return args + list(extra)


# The fedit run that test_simulation and test_generation_metrics read (conftest `fedit_run`):
# 3 clients on a Dirichlet split, an adapter saved every round, the cosine schedule, greedy-answer
# metrics in rounds 0, 2 and the last (3), TensorBoard event files.
FEDIT_ROUNDS, FEDIT_CLIENTS, FEDIT_STEPS = 3, 3, 15
FEDIT_RUN = [
    f"federation.num_rounds={FEDIT_ROUNDS}",
    f"federation.num_clients={FEDIT_CLIENTS}",
    "partition.method='dirichlet'",
    "partition.alpha=0.3",
    f"train.local_steps={FEDIT_STEPS}",
    "run.save_every=1",
    "train.lr_schedule='cosine'",
    "train.lr_min=1e-4",
    "data.global_eval_size=24",
    "eval.max_generate_examples=10",
    "eval.client_generate_examples=4",
    "eval.max_new_tokens=4",
    "eval.generate_every=2",
    "eval.tensorboard=true",
]
