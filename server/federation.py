"""The server side of one fedft run: build the strategy, run the rounds, write the run folder."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedft.config import Scenario
from fedft.console import Status
from fedft.data import encode_examples
from fedft.devices import select_device
from fedft.errors import FedftError, Interrupted
from fedft.evaluation import global_metrics
from fedft.flower_records import factors_to_record, record_to_factors, scenario_to_config
from fedft.models import load_peft_model
from fedft.report import RunRecorder
from fedft.run_folder import check_same_scenario, stored_config
from fedft.run_outputs import base_reference, write_outputs
from fedft.task import federated_data
from fedft.zo.trainable import initial_state, set_trainable_
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.replies import ClientUpdate
from server.strategies import strategy_class
from server.strategies.fedit import ClientLog, FedIT

log = logging.getLogger("fedft")


def build_strategy(scenario: Scenario, on_client: ClientLog) -> FedIT:
    """The scenario's strategy, with Flower's sampling settings."""
    fed = scenario.federation
    common = {
        "on_client": on_client,
        "zo": scenario.zo,
        "ferret": scenario.ferret,
        "run_seed": scenario.run.seed,
        "num_clients": fed.num_clients,
        "robust": scenario.robust,
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": fed.min_train_clients,
        # Rounds go ahead once the minimum is met: a client that drops out does not stall the run.
        "min_available_nodes": fed.min_train_clients,
    }
    return strategy_class(fed.strategy).from_scenario(scenario, **common)


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float,
    stop: threading.Event | None,
    on_wait: Callable[[int, int], None] | None = None,
) -> list[Message]:
    """``grid.send_and_receive``, but raising :class:`Interrupted` soon after ``stop`` is set.

    Flower's own call waits for every reply or the whole timeout, whatever else happens. While
    it waits, ``on_wait(replies, sent)`` is called about ten times a second.
    """
    if stop is None:
        return list(grid.send_and_receive(messages, timeout=timeout))
    pending = set(grid.push_messages(messages))
    sent, replies = len(pending), []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        if stop.is_set():
            raise Interrupted
        new = list(grid.pull_messages(pending))
        replies.extend(new)
        pending -= {m.metadata.reply_to_message_id for m in new}
        if on_wait is not None:
            on_wait(len(replies), sent)
        if pending:
            stop.wait(0.1)
    return replies


def run_federation(
    grid: Grid, scenario: Scenario, run_dir: Path, stop: threading.Event | None = None
) -> Path:
    """Run every round of ``scenario`` on ``grid`` and leave the run folder in ``run_dir``.

    With ``run.resume_dir`` set, continue that run folder from its checkpoint instead: no
    completed round is lost, and the rounds still to run see the same seeds as uninterrupted.
    Setting ``stop`` ends the run with :class:`Interrupted` while it waits for replies, so the
    folder keeps the last completed round and nothing half-written.
    """
    resume = bool(scenario.run.resume_dir)
    if resume:
        run_dir = Path(scenario.run.resume_dir)
        check_same_scenario(scenario, run_dir)
    model, tokenizer = load_peft_model(scenario.model, scenario.lora, scenario.run.seed)
    data = scenario.data
    eval_examples = federated_data(scenario).global_eval
    global_eval = encode_examples(
        list(eval_examples),
        tokenizer,
        data.max_length,
        template=data.template,
        chat=data.chat,
    )
    recorder = RunRecorder(
        run_dir, stored_config(scenario), scenario.federation.num_rounds, resume=resume
    )

    accepted: list[int] = []

    def on_client(server_round: int, update: ClientUpdate, bytes_down: int) -> None:
        accepted.append(update.node_id)
        metrics = {**update.metrics, "bytes_down": bytes_down, "bytes_up": update.bytes_up}
        recorder.client(server_round, update.node_id, metrics)

    strategy = build_strategy(scenario, on_client)
    modules = scenario.zo.trainable_modules if scenario.federation.strategy == "zo" else ()
    device = select_device("auto")

    status = Status()  # a progress line on a terminal, erased before each round's line
    num_rounds = scenario.federation.num_rounds

    def evaluate_global(
        server_round: int, arrays: ArrayRecord, strategy_metrics: MetricRecord | None = None
    ) -> None:
        status.show(f"round {server_round}/{num_rounds}: evaluating the global model")
        set_trainable_(model, record_to_factors(arrays), modules)
        metrics = global_metrics(
            model, tokenizer, global_eval, eval_examples, scenario, server_round, device
        )
        status.clear()
        recorder.round(server_round, {**metrics, **(strategy_metrics or {})})

    if resume:
        ckpt = load_checkpoint(run_dir)
        strategy.load_state(ckpt.strategy_state)
        recorder.truncate_after(ckpt.round)
        arrays, first = factors_to_record(ckpt.factors), ckpt.round + 1
        log.info("resuming %s after round %d", run_dir, ckpt.round)
    else:
        arrays, first = factors_to_record(initial_state(model, modules)), 1
        evaluate_global(0, arrays)
    train_config = scenario_to_config(scenario)
    base_ref = "" if modules else base_reference(scenario, run_dir)
    save_every = scenario.run.save_every
    for server_round in range(first, scenario.federation.num_rounds + 1):
        # Sampling is seeded per round, so a resumed run samples as the uninterrupted one.
        random.seed(scenario.run.seed * 1_000_003 + server_round)
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        round_started = time.monotonic()

        def waiting(replied: int, sent: int, r: int = server_round, t0: float = round_started):
            elapsed = time.monotonic() - t0
            status.show(f"round {r}/{num_rounds}: {replied}/{sent} clients done, {elapsed:.0f} s")

        try:
            replies = send_and_receive(
                grid, messages, scenario.federation.round_timeout_s, stop, waiting
            )
        finally:
            status.clear()
        new_arrays, strategy_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        evaluate_global(server_round, arrays, strategy_metrics)
        if save_every and server_round % save_every == 0:  # before the checkpoint: a kill reruns it
            factors = record_to_factors(arrays)
            write_outputs(
                model, factors, tokenizer, scenario, run_dir, server_round, base_ref, False
            )
        save_checkpoint(
            run_dir,
            Checkpoint(
                server_round,
                record_to_factors(arrays),
                strategy.state(),
                {"sampling": "random.seed(run.seed * 1000003 + round)"},
            ),
        )
    if first <= scenario.federation.num_rounds and not accepted:
        raise FedftError(
            "no client reply was accepted in any round (see the log lines above): nothing trained"
        )
    final = record_to_factors(arrays)
    last = scenario.federation.num_rounds
    write_outputs(model, final, tokenizer, scenario, run_dir, last, base_ref, True)
    recorder.finish()
    log.info("run folder: %s", run_dir)
    return run_dir
