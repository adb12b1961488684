"""The server side of one fedft run: build the strategy, run the rounds, write the run folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from fedft.adapters import get_factors, save_adapter, set_factors_
from fedft.algorithms.lora_fair import LoraFairConfig
from fedft.config import Scenario
from fedft.data import encode_examples
from fedft.models import base_model_folder, load_base, load_peft_model
from fedft.records import factors_to_record, record_to_factors, scenario_to_config
from fedft.report import RunRecorder
from fedft.task import federated_data
from fedft.train import evaluate, select_device
from server.strategies.fedit import ClientLog, ClientUpdate, FedIT
from server.strategies.lora_fair import LoraFair
from server.strategies.zo import ZoStrategy

log = logging.getLogger("fedft")


def build_strategy(scenario: Scenario, on_client: ClientLog) -> FedIT:
    """The scenario's strategy, with Flower's sampling settings."""
    fed = scenario.federation
    common = {
        "on_client": on_client,
        "zo": scenario.zo,
        "run_seed": scenario.run.seed,
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": fed.min_train_clients,
        "min_available_nodes": fed.num_clients,
    }
    if fed.strategy == "lora_fair":
        solver = LoraFairConfig(**scenario.lora_fair.__dict__)
        return LoraFair(solver=solver, **common)
    if fed.strategy == "zo":
        return ZoStrategy(**common)
    return FedIT(**common)


def default_run_dir(scenario: Scenario) -> Path:
    """``<output_dir>/<name>-<timestamp>``, unique per start."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(scenario.run.output_dir) / f"{scenario.run.name}-{stamp}"


def run_federation(grid: Grid, scenario: Scenario, run_dir: Path) -> Path:
    """Run every round of ``scenario`` on ``grid`` and leave the run folder in ``run_dir``."""
    model, tokenizer = load_peft_model(scenario.model, scenario.lora, scenario.run.seed)
    device = select_device("auto")
    data = scenario.data
    global_eval = encode_examples(
        list(federated_data(scenario).global_eval),
        tokenizer,
        data.max_length,
        template=data.template,
        chat=data.chat,
    )
    recorder = RunRecorder(run_dir, scenario.to_dict(), scenario.federation.num_rounds)

    def on_client(server_round: int, update: ClientUpdate, bytes_down: int) -> None:
        metrics = {**update.metrics, "bytes_down": bytes_down, "bytes_up": update.bytes_up}
        recorder.client(server_round, update.node_id, metrics)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        started = time.perf_counter()
        set_factors_(model, record_to_factors(arrays))
        result = evaluate(model, global_eval, scenario.train.batch_size * 4, device)
        metrics = {
            "eval_s": time.perf_counter() - started,
            "eval_loss": result.loss,
            "perplexity": result.perplexity,
            "accuracy": result.accuracy,
        }
        recorder.round(server_round, {**metrics, **strategy.round_metrics})
        return MetricRecord(metrics)

    fed = scenario.federation
    strategy = build_strategy(scenario, on_client)
    result = strategy.start(
        grid=grid,
        initial_arrays=factors_to_record(get_factors(model)),
        num_rounds=fed.num_rounds,
        timeout=fed.round_timeout_s,
        train_config=scenario_to_config(scenario),
        evaluate_fn=evaluate_global,
    )
    final = record_to_factors(result.arrays) if len(result.arrays) else get_factors(model)
    save_adapter(model, final, run_dir / "adapter", _base_ref(scenario, run_dir))
    recorder.finish()
    log.info("run folder: %s", run_dir)
    return run_dir


def _base_ref(scenario: Scenario, run_dir: Path) -> str:
    """Where the adapter's base lives; the built-in tiny base is saved into the run folder."""
    folder = base_model_folder(scenario.model)
    if folder is not None:
        return str(folder.resolve())
    base, tokenizer = load_base(scenario.model, scenario.run.seed)
    base.save_pretrained(run_dir / "base_model")
    tokenizer.save_pretrained(run_dir / "base_model")
    return str((run_dir / "base_model").resolve())
