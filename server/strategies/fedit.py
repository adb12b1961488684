"""FedIT on Flower: FedAvg of LoRA factors, every reply screened before it is averaged."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from peft import PeftModel

from fedft.algorithms.fedavg import weighted_average
from fedft.algorithms.hetero_lora import truncate_state
from fedft.algorithms.robust import coordinate_median, trimmed_mean
from fedft.config import FerretSection, RobustSection, Scenario, ZoSection
from fedft.flower_records import (
    FERRET_REPLY_KEY,
    ZO_SCALE_KEY,
    factors_to_record,
    record_to_factors,
    without_scenario,
)
from fedft.optim_config import ServerOptSection
from fedft.zo.scale import ScaleSchedule
from server import screening
from server.ferret_replies import decode_ferret
from server.partitions import PartitionSampler
from server.privacy import ServerPrivacy
from server.replies import ClientUpdate, ReplyCodec
from server.server_opt import build as server_optimizer
from server.strategies import register_strategy

log = logging.getLogger("fedft.server")


ClientLog = Callable[[int, ClientUpdate, int], None]


@register_strategy("fedit")
class FedIT(FedAvg):
    """Weighted FedAvg of each LoRA factor (FedIT), screening every reply first.

    Of Flower's :class:`~flwr.serverapp.strategy.FedAvg`, it replaces the two methods a LoRA
    strategy must: :meth:`configure_train` (each node's own content: the scenario's text only
    until the node holds it, a zo node's catch-up; bytes counted) and :meth:`aggregate_train`
    (replies decoded by the shared :class:`server.replies.ReplyCodec` and screened by
    :mod:`server.screening`, then aggregated). Subclasses override the hooks only:
    :meth:`aggregate_factors` (the aggregate), :meth:`decode` (what a reply must be),
    :meth:`node_content` (what a node is sent), :meth:`commit` and :meth:`state` (what they keep
    beyond the factors). Any failure past the replies leaves the global state as it was.

    Parameters
    ----------
    on_client : callable, optional
        Called as ``on_client(server_round, update, bytes_down)`` for every accepted reply.
    zo : ZoSection, optional
        Seed pool and step settings that zo replies (mixed or ``zo`` runs) are checked against.
    ferret : FerretSection, optional
        Pool, scaling and server lr that Ferret replies (mixed or ``ferret`` runs) are rebuilt with.
    run_seed : int
        The run's seed, from which every round's seed pool derives.
    num_clients : int, optional
        The scenario's client count: a zo reply's client index must be below it.
    robust : RobustSection, optional
        Reply limits and the aggregator (``mean``, ``median``, ``trimmed_mean``, ``krum``, ...).
    privacy : ServerPrivacy, optional
        ``[privacy]`` on: replies weigh the same and are clipped, the mean is noised and the
        epsilon spent is in the round's metrics (:mod:`server.privacy`).
    server_opt : ServerOptSection, optional
        A server optimiser stepping from the global factors towards each accepted aggregate
        (Flower's FedAvgM, FedAdam, FedYogi: :mod:`server.server_opt`); none by default.
    client_ranks : Mapping[int, int], optional
        Partition id -> LoRA rank, for the partitions of a rank below the server's
        (``client_groups.lora_rank``): such a node is sent the leading components of the global
        factors at its rank, and its reply must have that rank (then it is zero-padded).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(
        self,
        on_client: ClientLog | None = None,
        zo: ZoSection | None = None,
        ferret: FerretSection | None = None,
        run_seed: int = 0,
        num_clients: int | None = None,
        robust: RobustSection | None = None,
        privacy: ServerPrivacy | None = None,
        client_ranks: Mapping[int, int] | None = None,
        server_opt: ServerOptSection | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.server_opt = server_optimizer(server_opt or ServerOptSection())
        self.client_ranks = dict(client_ranks or {})
        self.on_client = on_client
        self.robust = robust or RobustSection()
        self.privacy = privacy
        if privacy is not None and privacy.central:  # one reply must not decide another's fate
            self.robust = dataclasses.replace(self.robust, norm_outlier_factor=math.inf)
        self.zo = zo or ZoSection()
        self.zo_scales = ScaleSchedule(self.zo)  # zo.grad_scale_rule = "adaptive": per round
        self.ferret = ferret or FerretSection()
        self.run_seed = run_seed
        self.replies = ReplyCodec(
            self.zo, run_seed, num_clients, self.robust, weighted_by_key=self.weighted_by_key
        )
        self.current_round = 0
        self.global_factors: dict[str, torch.Tensor] = {}
        self.bytes_down: dict[int, int] = {}  # per node: tensors and config entries sent to it
        self.scenario_holders: set[int] = set()
        self.sent: list[Message] = []
        self.sampler = PartitionSampler(run_seed, num_clients)  # for fraction_train < 1

    @classmethod
    def from_scenario(cls, scenario: Scenario, **kwargs: Any) -> FedIT:
        """The strategy ``scenario`` configures; ``kwargs`` are the arguments every one takes."""
        return cls(**kwargs)

    def state(self) -> dict:
        """JSON-able state beyond the global factors, for checkpoints.

        A server optimiser's, and the zo clients' announced int8 scales under the adaptive rule.
        """
        state: dict[str, Any] = {}
        if self.server_opt is not None:
            state["server_opt"] = self.server_opt.state()
        if self.zo_scales.active:
            state["zo_scale"] = self.zo_scales.state()
        return state

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""
        if self.server_opt is not None:
            self.server_opt.load_state(state.get("server_opt", ""))
        if self.zo_scales.active:
            self.zo_scales.load_state(state["zo_scale"])

    def configure_query(self, server_round: int, grid: Grid) -> list[Message]:
        """Ask the connected nodes whose partition is unknown for it (``fraction_train < 1``).

        Waits, as Flower's sampling does, until ``min_available_nodes`` are connected. With
        ``fraction_train = 1`` every node trains, so no partition needs to be known.
        """
        _, connected = sample_nodes(grid, self.min_available_nodes, 0)
        by_partition = self.fraction_train < 1 or self.client_ranks  # ranks follow partitions
        return self.sampler.queries(connected) if by_partition else []

    def aggregate_query(self, server_round: int, replies: Iterable[Message]) -> None:
        """Learn the partitions the replies to :meth:`configure_query` report."""
        self.sampler.learn(replies)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per sampled node (:meth:`node_content`), its bytes counted.

        With ``fraction_train < 1`` the round trains the partitions
        :func:`fedft.sampling.sample_partitions` picks among those of the connected nodes (paired:
        the same for every strategy with the same seed); otherwise every connected node. A node
        that replied without error holds the scenario's text (``clients/app.py`` keeps it in the
        node's state) and gets its digest only; a node whose reply was an error gets the text
        again. Also remembers the round's global factors, the reference every reply is checked
        against.
        """
        self.current_round = server_round
        self.global_factors = record_to_factors(arrays)
        config = ConfigRecord({**config, "server-round": server_round})
        scale = self.zo_scales.announce(server_round)  # zo clients' int8 scale, fixed before
        if scale is not None:
            config[ZO_SCALE_KEY] = scale
        self.replies.zo = self.zo_scales.round_zo(server_round)
        self.sent, self.bytes_down = [], {}
        nodes = sorted(grid.get_node_ids())
        if self.fraction_train < 1:
            nodes = self.sampler.sample(
                server_round, nodes, self.fraction_train, self.min_train_nodes
            )
        node_starts = self.node_starts(server_round, nodes)
        self.replies.start_round(server_round, self.global_factors, node_starts)
        for node in nodes:
            if self.client_ranks and node not in self.sampler.partition_of:
                continue  # its rank is unknown (logged by node_starts)
            node_config = without_scenario(config) if node in self.scenario_holders else config
            node_arrays = factors_to_record(node_starts[node]) if node in node_starts else arrays
            content = self.node_content(node, node_arrays, node_config)
            self.sent.append(Message(content, node, MessageType.TRAIN))
            self.bytes_down[node] = sum(record.count_bytes() for record in content.values())
        return self.sent

    def node_starts(
        self, server_round: int, nodes: list[int]
    ) -> dict[int, dict[str, torch.Tensor]]:
        """The start of each node of a rank below the server's: the leading components.

        :func:`fedft.algorithms.hetero_lora.truncate_state` of the global factors at the rank its
        partition trains. A node whose partition is unknown is logged (and sent nothing).
        """
        if not self.client_ranks:
            return {}
        starts = {}
        for node in nodes:
            partition = self.sampler.partition_of.get(node)
            if partition is None:
                log.warning(
                    "round %d: node %d has not said its partition: skipped", server_round, node
                )
            elif partition in self.client_ranks:
                starts[node] = truncate_state(self.global_factors, self.client_ranks[partition])
        return starts

    def node_content(self, node: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """What ``node`` is sent this round: its start factors and the config (FedIT)."""
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies (:mod:`server.screening`), aggregate the rest, check the result.

        Never raises for what a reply holds: a bad reply is dropped with a log line naming the
        node, and a round whose aggregation fails keeps the global state, logged with the round.
        """
        decode_started = time.perf_counter()  # decoding and checks (Ferret: the rebuilds)
        screened = screening.screen_replies(
            server_round, replies, self.sent, self.decode, self.global_factors, self.robust
        )
        decode_s = time.perf_counter() - decode_started
        self.scenario_holders = (self.scenario_holders | screened.answered) - screened.failed
        updates = screened.updates
        if not screening.has_quorum(server_round, updates, self.min_train_nodes):
            return None, self.metric_record({})
        # A fixed order (the clients' partition ids) makes float sums, and so runs, reproducible.
        updates.sort(key=lambda u: u.order)
        started = time.perf_counter()
        try:
            kept = screening.select_replies(server_round, updates, self.robust)
            if self.privacy is not None:  # equal weights; zo scalars clipped (central)
                kept = self.privacy.bound(kept)
            factors, metrics = self.aggregate_factors(server_round, kept)
            if self.server_opt is not None:  # Flower's FedAvgM / FedAdam / FedYogi step
                factors = self.server_opt.step(server_round, self.global_factors, factors)
            screening.check_aggregate(factors, self.global_factors)
            self.commit(server_round, kept)
            if self.privacy is not None:
                metrics |= self.privacy.spend(server_round)
            if self.server_opt is not None:
                self.server_opt.commit()
            self.zo_scales.observe(server_round, [[r.grad for r in u.records] for u in kept])
        except Exception as err:  # a bug or an unforeseen reply must never end the run
            log.error(
                "round %d: aggregation failed (%s: %s); the global state is unchanged",
                server_round,
                type(err).__name__,
                err,
            )
            return None, self.metric_record({})
        if self.on_client is not None:
            for update in updates:
                self.on_client(server_round, update, self.bytes_down.get(update.node_id, 0))
        metrics["aggregate_s"] = time.perf_counter() - started
        metrics["decode_s"] = decode_s
        if self.zo_scales.active:
            metrics["zo.int8_scale"] = self.zo_scales.scales[server_round]
        return factors_to_record(factors), self.metric_record(metrics)

    def metric_record(self, metrics: dict[str, float]) -> MetricRecord:
        """The round's strategy metrics, with the partitions it sampled (``fraction_train < 1``)."""
        values: dict[str, int | float | list[int] | list[float]] = {**metrics}
        if self.fraction_train < 1:
            values["sampled_partitions"] = list(self.sampler.sampled)
        return MetricRecord(values)

    def decode(self, msg: Message) -> ClientUpdate:
        """Decode and check a reply of any kind (:meth:`server.replies.ReplyCodec.decode`).

        A Ferret client's factors are rebuilt from its coordinates (:mod:`server.ferret_replies`).
        """
        if FERRET_REPLY_KEY in msg.content.config_records:
            return decode_ferret(self.replies, msg, self.ferret)[0]
        return self.replies.decode(msg)

    def aggregate_factors(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[Mapping[str, torch.Tensor], dict[str, float]]:
        """FedIT: ``A_bar = sum_k p_k A_k`` and ``B_bar = sum_k p_k B_k``, p_k by examples.

        With ``robust.aggregator`` ``median`` or ``trimmed_mean``, the coordinate-wise median or
        trimmed mean of the factors instead (:mod:`fedft.algorithms.robust`).

        Returns
        -------
        tuple[Mapping[str, torch.Tensor], dict[str, float]]
            The new global factors and the round's strategy metrics (none for FedIT), which
            :meth:`aggregate_train` returns in its ``MetricRecord``.
        """
        if self.privacy is not None:  # clipped (central) and noised: X + noisy mean of Delta_k
            return self.privacy.mean_factors(
                server_round, updates, self.global_factors, len(self.sent)
            ), {}
        states = [u.factors for u in updates]
        if self.robust.aggregator == "median":
            return coordinate_median(states), {}
        if self.robust.aggregator == "trimmed_mean":
            return trimmed_mean(states, self.robust.trim_fraction), {}
        return weighted_average(states, [u.num_examples for u in updates]), {}

    def prepare_model(self, model: PeftModel) -> None:
        """Make the server's model hold what the strategy keeps outside the factors (FedIT: none).

        Called before the global factors are evaluated.
        """

    def output_factors(self, factors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The adapter to write for the global ``factors`` (FedIT: they are it)."""
        return dict(factors)

    def commit(self, server_round: int, updates: list[ClientUpdate]) -> None:
        """Keep what the accepted aggregate changes beyond the factors (nothing for FedIT)."""
