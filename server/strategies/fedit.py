"""FedIT on Flower: FedAvg of LoRA factors, with every reply validated before it is averaged."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedft.algorithms.fedavg import weighted_average
from fedft.algorithms.robust import coordinate_median, krum_select, trimmed_mean
from fedft.algorithms.validation import (
    bounded_weights,
    check_lora_products,
    norm_outliers,
    update_norm,
    validate_factors,
)
from fedft.config import FerretSection, RobustSection, Scenario, ZoSection
from fedft.errors import ReplyError
from fedft.flower_records import (
    FERRET_REPLY_KEY,
    factors_to_record,
    record_to_factors,
    without_scenario,
)
from server.ferret_replies import decode_ferret
from server.replies import ClientUpdate, ReplyCodec
from server.strategies import register_strategy

log = logging.getLogger("fedft.server")


ClientLog = Callable[[int, ClientUpdate, int], None]


@register_strategy("fedit")
class FedIT(FedAvg):
    """Weighted FedAvg of each LoRA factor (FedIT), validating every reply first.

    Subclasses override :meth:`aggregate_factors` (and :meth:`commit`, for state beyond the
    factors) only; validation, logging of dropped replies and byte accounting stay here.

    What a round's replies go through, in order: one reply per node (a later one is dropped);
    per reply, :class:`server.replies.ReplyCodec` (decode any kind, layout, finiteness, update
    limits, finite ``B A``); the norm-outlier test (>= 3 replies); weights capped by
    :func:`fedft.algorithms.validation.bounded_weights`; at least ``min_train_nodes`` replies;
    Krum's selection if configured; the aggregate, checked finite before it becomes the global
    state. Any failure past the replies leaves the global state as it was, logged with the round.

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
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.on_client = on_client
        self.robust = robust or RobustSection()
        self.zo = zo or ZoSection()
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

    @classmethod
    def from_scenario(cls, scenario: Scenario, **kwargs: object) -> FedIT:
        """The strategy ``scenario`` configures; ``kwargs`` are the arguments every one takes."""
        return cls(**kwargs)  # type: ignore[arg-type]

    def state(self) -> dict:
        """JSON-able state beyond the global factors, for checkpoints (none for FedIT)."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per sampled node (:meth:`node_content`), its bytes counted.

        Also remembers the round's global factors, the reference every reply is checked against.
        """
        self.current_round = server_round
        self.global_factors = record_to_factors(arrays)
        self.replies.start_round(server_round, self.global_factors)
        num_nodes = int(len(list(grid.get_node_ids())) * self.fraction_train)
        node_ids, _ = sample_nodes(
            grid, self.min_available_nodes, max(num_nodes, self.min_train_nodes)
        )
        config = ConfigRecord({**config, "server-round": server_round})
        messages, self.bytes_down = [], {}
        for node in node_ids:
            content = self.node_content(node, arrays, self.config_for(node, config))
            messages.append(Message(content, node, MessageType.TRAIN))
            self.bytes_down[node] = sum(record.count_bytes() for record in content.values())
        self.sent = messages
        return messages

    def node_content(self, node: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """What ``node`` is sent this round: the global factors and the config (FedIT)."""
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})

    def config_for(self, node: int, config: ConfigRecord) -> ConfigRecord:
        """The round's config for ``node``: the scenario's text only if the node may lack it.

        A node that replied without error holds the text (``clients/app.py`` keeps it in the
        node's state) and gets its digest only; a node whose reply was an error gets the text again.
        """
        return without_scenario(config) if node in self.scenario_holders else config

    def destination(self, reply: Message) -> int:
        """The node an instruction went to; an error reply comes from the SuperLink, not it."""
        for sent in self.sent:  # message ids are set when the Grid pushes the instructions
            if sent.metadata.message_id == reply.metadata.reply_to_message_id:
                return sent.metadata.dst_node_id
        return reply.metadata.src_node_id

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies (see the class docstring), aggregate the rest, check the result.

        Never raises for what a reply holds: a bad reply is dropped with a log line naming the
        node, and a round whose aggregation fails keeps the global state, logged with the round.
        """
        updates = self.screen(server_round, replies)
        needed = max(1, self.min_train_nodes)
        if len(updates) < needed:
            log.warning(
                "round %d: %d valid replies, fewer than the %d a round needs "
                "(federation.min_train_clients); the global state is unchanged",
                server_round,
                len(updates),
                needed,
            )
            return None, MetricRecord()
        # A fixed order (the clients' partition ids) makes float sums, and so runs, reproducible.
        updates.sort(key=lambda u: u.order)
        started = time.perf_counter()
        try:
            kept = self.select(server_round, updates)
            factors, metrics = self.aggregate_factors(server_round, kept)
            validate_factors(factors, self.global_factors, 1.0)
            check_lora_products(factors)
            self.commit(server_round, kept)
        except Exception as err:  # a bug or an unforeseen reply must never end the run
            log.error(
                "round %d: aggregation failed (%s: %s); the global state is unchanged",
                server_round,
                type(err).__name__,
                err,
            )
            return None, MetricRecord()
        if self.on_client is not None:
            for update in updates:
                self.on_client(server_round, update, self.bytes_down.get(update.node_id, 0))
        metrics["aggregate_s"] = time.perf_counter() - started
        return factors_to_record(factors), MetricRecord(metrics)

    def screen(self, server_round: int, replies: Iterable[Message]) -> list[ClientUpdate]:
        """The round's valid replies: decoded, checked, outliers dropped, weights bounded."""
        updates, seen = [], set()
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                node = self.destination(msg)
                self.scenario_holders.discard(node)
                log.warning("round %d: node %d failed: %s", server_round, node, msg.error.reason)
                continue
            if node in seen or node not in self.bytes_down:
                why = "a second reply this round" if node in seen else "it was sent nothing"
                log.warning("round %d: dropped reply of node %d: %s", server_round, node, why)
                continue
            seen.add(node)
            self.scenario_holders.add(node)
            try:
                updates.append(self.parse_reply(msg))
            except ReplyError as err:
                log.warning("round %d: dropped reply of node %d: %s", server_round, node, err)
            except Exception as err:  # a decoder's gap must drop the reply, not end the run
                log.warning(
                    "round %d: dropped reply of node %d: malformed (%s: %s)",
                    server_round,
                    node,
                    type(err).__name__,
                    err,
                )
        return self.bound_weights(server_round, self.drop_norm_outliers(server_round, updates))

    def bound_weights(self, server_round: int, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """Cap each reply's weight (:func:`fedft.algorithms.validation.bounded_weights`), logged."""
        claims = [u.num_examples for u in updates]
        weights = bounded_weights(claims, self.robust.max_num_examples, self.robust.median_multiple)
        for update, claim, weight in zip(updates, claims, weights, strict=True):
            if weight < claim:
                log.warning(
                    "round %d: node %d claims %.6g examples; weighted as %.6g "
                    "(robust.max_num_examples, robust.median_multiple x the round's median)",
                    server_round,
                    update.node_id,
                    claim,
                    weight,
                )
        return [
            dataclasses.replace(u, num_examples=w) for u, w in zip(updates, weights, strict=True)
        ]

    def drop_norm_outliers(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> list[ClientUpdate]:
        """Drop, with a log line naming the node, replies whose change dwarfs the others'.

        See :func:`fedft.algorithms.validation.norm_outliers`; needs >= 3 replies with factors.
        """
        if len(updates) < 3 or not all(u.factors for u in updates):
            return updates
        factor = self.robust.norm_outlier_factor
        norms = [update_norm(u.factors, self.global_factors) for u in updates]
        outliers = set(norm_outliers(norms, factor))
        for k in sorted(outliers):
            log.warning(
                "round %d: dropped reply of node %d: update norm %.4g is more than %g x the "
                "median of the others'",
                server_round,
                updates[k].node_id,
                norms[k],
                factor,
            )
        return [u for k, u in enumerate(updates) if k not in outliers]

    def select(self, server_round: int, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """The replies Krum / Multi-Krum keep (``robust.aggregator``); all of them otherwise."""
        aggregator = self.robust.aggregator
        if aggregator not in ("krum", "multi_krum") or not all(u.factors for u in updates):
            return updates
        f = self.robust.byzantine
        keep = 1 if aggregator == "krum" else max(1, len(updates) - f)
        kept = krum_select([u.factors for u in updates], f, keep)
        left = [u.node_id for k, u in enumerate(updates) if k not in kept]
        if left:
            log.info("round %d: %s left out nodes %s", server_round, aggregator, left)
        return [updates[k] for k in kept]

    def parse_reply(self, msg: Message) -> ClientUpdate:
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
        states = [u.factors for u in updates]
        if self.robust.aggregator == "median":
            return coordinate_median(states), {}
        if self.robust.aggregator == "trimmed_mean":
            return trimmed_mean(states, self.robust.trim_fraction), {}
        return weighted_average(states, [u.num_examples for u in updates]), {}

    def commit(self, server_round: int, updates: list[ClientUpdate]) -> None:
        """Keep what the accepted aggregate changes beyond the factors (nothing for FedIT)."""
