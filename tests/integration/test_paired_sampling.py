"""Paired runs: with one seed and fraction_train < 1, every strategy trains the same partitions.

Real Flower simulations (Ray backend) of the tiny model through the CLI, one per strategy; each
run's node ids are Flower's random ones, so only sampling by partition can make them agree.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from fedft.config import load_scenario
from fedft.report import read_metrics
from fedft.sampling import sample_partitions

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
SCENARIO = ROOT / "simulations/default.toml"
NUM_CLIENTS, ROUNDS = 4, 3
OVERRIDES = [
    f"federation.num_clients={NUM_CLIENTS}",
    f"federation.num_rounds={ROUNDS}",
    "federation.fraction_train=0.5",
    "partition.method='iid'",
    "train.local_steps=3",
    "zo.local_steps=5",
]
STRATEGIES = ("fedit", "lora_fair", "zo")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    rows = {}
    for strategy in STRATEGIES:
        out = tmp_path_factory.mktemp(strategy) / "run"
        args = [sys.executable, "-m", "fedft.cli", "simulate", str(SCENARIO)]
        for o in [*OVERRIDES, f"federation.strategy='{strategy}'"]:
            args += ["--set", o]
        proc = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-4000:]
        rows[strategy] = read_metrics(out / "metrics.jsonl")
    return rows


def predicted(server_round):
    seed = load_scenario(SCENARIO).run.seed
    return list(sample_partitions(seed, server_round, range(NUM_CLIENTS), NUM_CLIENTS // 2))


def test_the_rounds_sample_what_the_pure_function_predicts(runs):
    assert len({tuple(predicted(r)) for r in range(1, ROUNDS + 1)}) > 1  # the sample moves
    for strategy, rows in runs.items():
        rounds = {r["round"]: r for r in rows if r["kind"] == "round"}
        for server_round in range(1, ROUNDS + 1):
            sampled = rounds[server_round]["sampled_partitions"]
            assert sampled == predicted(server_round), (strategy, server_round)
            trained = sorted(
                int(r["partition"])
                for r in rows
                if r["kind"] == "client" and r["round"] == server_round
            )
            assert trained == sampled, (strategy, server_round)


def test_paired_runs_start_from_the_same_eval_and_train_on_the_same_batches(runs):
    def row(strategy, server_round):
        return next(
            r for r in runs[strategy] if r["kind"] == "round" and r["round"] == server_round
        )

    # the same global eval examples (and initial model): the same round-0 loss, bit for bit
    assert len({row(s, 0)["eval_loss"] for s in STRATEGIES}) == 1

    def first_round_losses(strategy):
        return {
            int(r["partition"]): r["train_loss"]
            for r in runs[strategy]
            if r["kind"] == "client" and r["round"] == 1
        }

    # fedit and lora_fair start round 1 from the same factors: same clients, same batches
    assert first_round_losses("fedit") == first_round_losses("lora_fair")
