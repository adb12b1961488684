"""The server side of one fedft run: set up, run the rounds, checkpoint each, write the run folder.

:func:`run_federation` reads as torchtune's recipes do: :meth:`Federation.setup` builds the parts
(model, global eval set, recorder, strategy), :meth:`Federation.start` evaluates the initial model
or restores a checkpoint, then each round is :meth:`Federation.run_round` (sample, send, screen
and aggregate, evaluate) and :meth:`Federation.checkpoint`; :meth:`Federation.finish` writes the
final outputs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedft.config import Scenario
from fedft.console import Status
from fedft.data import EncodedDataset, Example, encode_examples
from fedft.devices import select_device
from fedft.errors import FedftError, Interrupted
from fedft.evaluation import global_metrics
from fedft.flower_records import factors_to_record, record_to_factors, scenario_to_config
from fedft.models import load_peft_model
from fedft.report import RunRecorder
from fedft.run_folder import check_same_scenario, stored_config
from fedft.run_outputs import base_reference, write_outputs
from fedft.task import federated_data
from fedft.zo.mask_build import run_mask
from fedft.zo.sparse import install_
from fedft.zo.trainable import initial_state, set_trainable_
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.privacy import ServerPrivacy
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
        "privacy": ServerPrivacy(scenario) if scenario.privacy.enabled else None,
        "server_opt": scenario.server_opt,
        "client_ranks": {  # partitions of a rank below the server's (client_groups.lora_rank)
            pid: scenario.rank_for(pid)
            for pid in range(fed.num_clients)
            if scenario.rank_for(pid) != scenario.lora.rank
        },
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": fed.min_train_clients,
        # Rounds go ahead once the minimum is met: a client that drops out does not stall the run.
        "min_available_nodes": fed.min_train_clients,
    }
    cls = cast("type[FedIT]", strategy_class(fed.strategy))  # every strategy is a FedIT
    return cls.from_scenario(scenario, **common)


PULL_SHARE = 0.05  # of the driver's time that pulling replies may take (send_and_receive)


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float,
    stop: threading.Event | None,
    on_wait: Callable[[int, int], None] | None = None,
) -> list[Message]:
    """``grid.send_and_receive``, but raising :class:`Interrupted` soon after ``stop`` is set.

    Flower's own call waits for every reply or the whole timeout, whatever else happens, and
    its deployed grid pulls every 3 s (``time.sleep(3)`` in ``flwr/superlink/grid/http_grid.py``),
    up to 3 s a round after the last reply came in. While it waits, ``on_wait(replies, sent)``
    is called after every pull.

    Pulls come every 0.1 s, or less often when a pull itself takes longer than
    ``PULL_SHARE`` of that: Flower's in-memory link state checks every pending instruction on
    each pull (about 15-30 us each), so with 1,000 clients in flight a pull every 0.1 s would
    keep a fifth of a core busy in the driver, beside the clients. The wait after a pull is
    ``max(0.1, pull_s / PULL_SHARE)`` seconds.
    """
    pending = set(grid.push_messages(messages))
    sent, replies = len(pending), []
    deadline = time.monotonic() + timeout
    stop = stop or threading.Event()  # deployed (flwr run): nothing sets it
    while pending and time.monotonic() < deadline:
        if stop.is_set():
            raise Interrupted
        started = time.perf_counter()
        new = list(grid.pull_messages(pending))
        pull_s = time.perf_counter() - started
        replies.extend(new)
        pending -= {m.metadata.reply_to_message_id for m in new}
        if on_wait is not None:
            on_wait(len(replies), sent)
        if pending:
            stop.wait(max(0.1, pull_s / PULL_SHARE))
    return replies


@dataclass
class ClientRecords:
    """Records every accepted reply in ``metrics.jsonl`` (the strategy's ``on_client``)."""

    recorder: RunRecorder
    accepted: int = 0

    def __call__(self, server_round: int, update: ClientUpdate, bytes_down: int) -> None:
        """Record ``update``, accepted in ``server_round`` after ``bytes_down`` bytes sent."""
        self.accepted += 1
        metrics = {**update.metrics, "bytes_down": bytes_down, "bytes_up": update.bytes_up}
        self.recorder.client(server_round, update.node_id, metrics)


@dataclass
class RoundProgress:
    """The terminal's progress line while a round's replies come in (``send_and_receive``)."""

    status: Status
    server_round: int
    num_rounds: int
    started: float = field(default_factory=time.monotonic)

    def __call__(self, replied: int, sent: int) -> None:
        """Show how many of the ``sent`` instructions have ``replied``."""
        elapsed = time.monotonic() - self.started
        self.status.show(
            f"round {self.server_round}/{self.num_rounds}: {replied}/{sent} clients done, "
            f"{elapsed:.0f} s"
        )


@dataclass
class Federation:
    """The parts of one run, built by :meth:`setup`; :func:`run_federation` drives them."""

    scenario: Scenario
    run_dir: Path
    resume: bool
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    eval_examples: tuple[Example, ...]  # the global eval set, as text (generation metrics)
    global_eval: EncodedDataset
    recorder: RunRecorder
    clients: ClientRecords
    strategy: FedIT
    device: torch.device
    base_ref: str
    train_config: ConfigRecord  # the round's config every node gets (the scenario, then its digest)
    status: Status = field(default_factory=Status)  # erased before each round's line

    @classmethod
    def setup(cls, scenario: Scenario, run_dir: Path) -> Federation:
        """Load the model and the global eval set, open the run folder, build the strategy.

        With ``run.resume_dir`` set, the run folder is that one (its scenario must be the same).
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
        fed = scenario.federation
        recorder = RunRecorder(run_dir, stored_config(scenario), fed.num_rounds, resume=resume)
        clients = ClientRecords(recorder)
        strategy = build_strategy(scenario, clients)
        if scenario.zo.sparse:  # built once, kept in the run folder, sent once to each node
            mask = run_mask(scenario, model, tokenizer, run_dir)
            strategy.sparse_mask = mask  # type: ignore[attr-defined]  # a zo run: ZoStrategy
            install_(model, mask)
        if strategy.privacy is not None:  # `fedft server` and `fedft simulate` show it at start
            log.info(strategy.privacy.describe())
        return cls(
            scenario=scenario,
            run_dir=run_dir,
            resume=resume,
            model=model,
            tokenizer=tokenizer,
            eval_examples=eval_examples,
            global_eval=global_eval,
            recorder=recorder,
            clients=clients,
            strategy=strategy,
            device=select_device("auto"),
            base_ref="" if scenario.trained_modules else base_reference(scenario, run_dir),
            train_config=scenario_to_config(scenario),
        )

    def start(self) -> tuple[ArrayRecord, int]:
        """The global state to start from and the first round to run.

        A new run evaluates its initial state as round 0; a resumed one restores its checkpoint
        (the strategy's state too) and drops the metrics of any round after it.
        """
        if not self.resume:
            arrays = factors_to_record(initial_state(self.model, self.scenario.trained_modules))
            self.evaluate(0, arrays, None)
            return arrays, 1
        ckpt = load_checkpoint(self.run_dir)
        self.strategy.load_state(ckpt.strategy_state)
        if self.strategy.privacy is not None:  # the accountant continues where it stopped
            self.strategy.privacy.load_state(ckpt.strategy_state.get("privacy", []))
        self.recorder.truncate_after(ckpt.round)
        log.info("resuming %s after round %d", self.run_dir, ckpt.round)
        return factors_to_record(ckpt.factors), ckpt.round + 1

    def run_round(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, stop: threading.Event | None
    ) -> ArrayRecord:
        """Sample and instruct the clients, screen and aggregate their replies, evaluate.

        Sampling by partition (``fraction_train < 1``) first asks the nodes it has not heard
        from for their partition (:mod:`server.partitions`).

        Returns the new global state (the old one when no aggregate was accepted).
        """
        fed = self.scenario.federation
        queries = self.strategy.configure_query(server_round, grid)  # nodes not heard from yet
        if queries:
            answers = send_and_receive(grid, queries, fed.round_timeout_s, stop)
            self.strategy.aggregate_query(server_round, answers)
        # A pure function of (seed, round, partitions): a resumed run samples as uninterrupted.
        messages = self.strategy.configure_train(server_round, arrays, self.train_config, grid)
        progress = RoundProgress(self.status, server_round, fed.num_rounds)
        try:
            replies = send_and_receive(grid, messages, fed.round_timeout_s, stop, progress)
        finally:
            self.status.clear()
        new_arrays, strategy_metrics = self.strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        self.evaluate(server_round, arrays, strategy_metrics)
        return arrays

    def evaluate(
        self, server_round: int, arrays: ArrayRecord, strategy_metrics: MetricRecord | None
    ) -> None:
        """Evaluate ``arrays`` on the global eval set; record it with the strategy's metrics."""
        num_rounds = self.scenario.federation.num_rounds
        self.status.show(f"round {server_round}/{num_rounds}: evaluating the global model")
        self.strategy.prepare_model(self.model)  # FLoRA: the merged base
        set_trainable_(self.model, record_to_factors(arrays), self.scenario.trained_modules)
        metrics = global_metrics(
            self.model,
            self.tokenizer,
            self.global_eval,
            self.eval_examples,
            self.scenario,
            server_round,
            self.device,
        )
        self.status.clear()
        row: dict[str, Any] = {**metrics, **(strategy_metrics or {})}  # sampled_partitions: a list
        self.recorder.round(server_round, row)

    def checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """Write the round's ``run.save_every`` outputs, then its checkpoint (a kill reruns)."""
        factors = record_to_factors(arrays)
        save_every = self.scenario.run.save_every
        if save_every and server_round % save_every == 0:
            self.write(factors, server_round, final=False)
        sampling = {"sampling": "fedft.sampling.sample_partitions(run.seed, round, partitions)"}
        strategy_state = self.strategy.state()
        if self.strategy.privacy is not None:
            strategy_state = {**strategy_state, "privacy": self.strategy.privacy.state()}
        state = Checkpoint(server_round, factors, strategy_state, sampling)
        save_checkpoint(self.run_dir, state)

    def write(self, factors: dict[str, torch.Tensor], server_round: int, final: bool) -> None:
        """Write the adapter (or module weights) of ``server_round``."""
        write_outputs(
            self.model,
            self.strategy.output_factors(factors),
            self.tokenizer,
            self.scenario,
            self.run_dir,
            server_round,
            self.base_ref,
            final,
        )

    def finish(self, arrays: ArrayRecord, trained: bool) -> Path:
        """Write the final outputs and the plot; refuse a run in which nothing was accepted."""
        if trained and not self.clients.accepted:
            raise FedftError(
                "no client reply was accepted in any round (see the log lines above): "
                "nothing trained"
            )
        self.write(record_to_factors(arrays), self.scenario.federation.num_rounds, final=True)
        self.recorder.finish()
        log.info("run folder: %s", self.run_dir)
        return self.run_dir


def run_federation(
    grid: Grid, scenario: Scenario, run_dir: Path, stop: threading.Event | None = None
) -> Path:
    """Run every round of ``scenario`` on ``grid`` and leave the run folder in ``run_dir``.

    With ``run.resume_dir`` set, continue that run folder from its checkpoint instead: no
    completed round is lost, and the rounds still to run see the same seeds as uninterrupted.
    Setting ``stop`` ends the run with :class:`Interrupted` while it waits for replies, so the
    folder keeps the last completed round and nothing half-written.
    """
    federation = Federation.setup(scenario, run_dir)
    arrays, first = federation.start()
    last = scenario.federation.num_rounds
    privacy = federation.strategy.privacy
    ran = 0  # rounds this process ran (a resumed run may have none left in its budget)
    for server_round in range(first, last + 1):
        if privacy is not None and privacy.exhausted(server_round):
            log.warning(
                "privacy budget privacy.target_epsilon = %g exhausted: stopping before round %d "
                "(epsilon spent %.4g; checkpoint of round %d kept)",
                privacy.settings.target_epsilon,
                server_round,
                privacy.accountant.epsilon,
                server_round - 1,
            )
            break
        arrays = federation.run_round(grid, server_round, arrays, stop)
        federation.checkpoint(server_round, arrays)
        ran += 1
    return federation.finish(arrays, trained=ran > 0)
