"""The reply codec every strategy shares: any kind of client reply in, one validated update out.

A reply is input from an untrusted party (``docs/robustness.md``). It comes in one of three kinds,
told apart by its records: an ``ArrayRecord`` of factors, a ``fedft.v1.LoraUpdate``
(:mod:`fedft.wire.update`) or a ``fedft.v1.ZoReply`` (:mod:`fedft.wire.zo_reply`), whose factors the
server rebuilds from the round's start (:func:`fedft.zo.replay.rebuild_factors`). Whatever the kind,
:meth:`ReplyCodec.decode` returns a :class:`ClientUpdate` whose factors passed every check, or
raises :class:`~fedft.errors.ReplyError`; a strategy only aggregates.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import Message, RecordDict

from fedft.algorithms.ffa_lora import check_frozen_a
from fedft.algorithms.hetero_lora import pad_state, state_rank
from fedft.algorithms.validation import (
    check_lora_products,
    check_update_limits,
    state_norm,
    validate_factors,
)
from fedft.config import RobustSection, ZoSection
from fedft.errors import ReplyError
from fedft.factors import factors_digest
from fedft.flower_records import UPDATE_KEY, ZO_REPLY_KEY, record_nbytes, record_to_factors
from fedft.wire.update import decode_update
from fedft.wire.zo_reply import decode_zo_reply
from fedft.zo.replay import rebuild_factors
from fedft.zo.seeds import ZoRecord, seed_pool_id

log = logging.getLogger("fedft.server")

MAX_METRICS = 64  # a reply's metrics are recorded: a hostile one must not flood metrics.jsonl


@dataclass(frozen=True)
class ClientUpdate:
    """A validated reply: its node, factors, weight and reported metrics."""

    node_id: int
    factors: dict[str, torch.Tensor]
    num_examples: float
    metrics: dict[str, float]
    bytes_up: int
    records: tuple[ZoRecord, ...] = ()  # a zo client's steps (its factors are rebuilt from them)
    # ||X_k - X_start|| at the node's own rank, when its factors were zero-padded to the server's
    # (the padded factors' distance to the global ones would count the components it never had)
    update_norm: float | None = None

    @property
    def order(self) -> tuple[float, int]:
        """Aggregation order: the client's partition id (reported, so only if sane), then node."""
        partition = self.metrics.get("partition", math.inf)
        return (partition if math.isfinite(partition) else math.inf, self.node_id)


@dataclass
class ReplyCodec:
    """Decode and check the replies of one round against the run's configuration.

    Parameters
    ----------
    zo : ZoSection
        Seed pool and step settings zo replies are checked against (mixed or ``zo`` runs).
    run_seed : int
        The run's seed, from which every round's seed pool derives.
    num_clients : int, optional
        The scenario's client count: a zo reply's client index must be below it.
    robust : RobustSection
        Update-norm limits (``robust.max_update_norm``, ``robust.max_relative_update``).
    weighted_by_key : str
        The metric holding a reply's example count (Flower's ``num-examples``).
    """

    zo: ZoSection = field(default_factory=ZoSection)
    run_seed: int = 0
    num_clients: int | None = None
    robust: RobustSection = field(default_factory=RobustSection)
    weighted_by_key: str = "num-examples"
    frozen_a: bool = False  # FFA-LoRA: a reply's lora_A must be exactly what it was sent
    server_round: int = 0
    global_factors: dict[str, torch.Tensor] = field(default_factory=dict)
    global_norm: float = 0.0  # ||X|| of the round's global factors
    zo_clients: dict[int, int] = field(default_factory=dict)  # zo client index -> node, this round
    node_starts: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    global_digest: int | None = None  # factors_digest(global_factors), once a round

    def start_round(
        self,
        server_round: int,
        global_factors: dict[str, torch.Tensor],
        node_starts: Mapping[int, dict[str, torch.Tensor]] | None = None,
    ) -> None:
        """Check this round's replies against ``global_factors``, the state it started from.

        ``node_starts`` holds what a node of another rank than the server's was sent (the leading
        components of ``global_factors``): its reply must have exactly those shapes.
        """
        self.server_round = server_round
        self.global_factors = global_factors
        self.global_norm = state_norm(global_factors)
        self.global_digest = None
        self.zo_clients = {}
        self.node_starts = dict(node_starts or {})

    def decode(self, msg: Message) -> ClientUpdate:
        """Turn a reply of any kind into a :class:`ClientUpdate`, raising :class:`ReplyError`.

        A reply is checked against what its node was sent; a node of a lower rank's factors are
        then zero-padded to the server's rank (:func:`fedft.algorithms.hetero_lora.pad_state`),
        which keeps every product ``B_k A_k``.
        """
        content = msg.content
        metrics, num_examples = self.reply_metrics(content)
        node = msg.metadata.src_node_id
        start = self.node_starts.get(node, self.global_factors)
        update = functools.partial(
            ClientUpdate, node_id=node, num_examples=num_examples, metrics=metrics
        )
        if ZO_REPLY_KEY in content.config_records:
            payload, records = self.zo_records(content, node)
            factors = rebuild_factors(start, records, self.zo, self.run_seed, self.server_round)
            self.check_factors(factors, num_examples, metrics, start)
            metrics["zo_rebuild_exact"] = self.check_digest(metrics, "end_digest", factors, node)
            return update(
                factors=self.padded(factors, start), bytes_up=len(payload), records=records
            )
        if UPDATE_KEY in content.config_records:
            encoded = content.config_records[UPDATE_KEY].get(UPDATE_KEY)
            if not isinstance(encoded, bytes):
                raise ReplyError(f"reply: `{UPDATE_KEY}.{UPDATE_KEY}` must be bytes")
            factors = decode_update(encoded, template=start)
            self.check_factors(factors, num_examples, metrics, start)
            return update(
                factors=self.padded(factors, start),
                bytes_up=len(encoded),
                update_norm=self.own_norm(metrics, start),
            )
        if len(content.array_records) != 1:
            raise ReplyError("reply must hold exactly one ArrayRecord (or a zo record)")
        record = next(iter(content.array_records.values()))
        factors = record_to_factors(record, template=start)
        self.check_factors(factors, num_examples, metrics, start)
        return update(
            factors=self.padded(factors, start),
            bytes_up=record_nbytes(record),
            update_norm=self.own_norm(metrics, start),
        )

    def own_norm(
        self, metrics: dict[str, float], start: Mapping[str, torch.Tensor]
    ) -> float | None:
        """The update norm :meth:`check_factors` measured, for a node of a lower rank only."""
        return None if start is self.global_factors else metrics["update_norm"]

    def padded(
        self, factors: dict[str, torch.Tensor], start: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``factors`` at the server's rank: zero-padded if ``start`` was of a lower rank."""
        if start is self.global_factors:
            return factors
        return pad_state(factors, state_rank(self.global_factors))

    def decode_zo(self, msg: Message) -> ClientUpdate:
        """A ``zo`` run's reply: its records only (aggregated per seed, not rebuilt one by one)."""
        content = msg.content
        node = msg.metadata.src_node_id
        if ZO_REPLY_KEY not in content.config_records:
            raise ReplyError("a zo run takes zo replies only (a `zo` ConfigRecord and metrics)")
        metrics, num_examples = self.reply_metrics(content)
        payload, records = self.zo_records(content, node)
        metrics["zo_synced_exact"] = self.check_digest(
            metrics, "start_digest", self.global_factors, node
        )
        return ClientUpdate(
            node_id=node,
            factors={},
            num_examples=num_examples,
            metrics=metrics,
            bytes_up=len(payload),
            records=records,
        )

    def reply_metrics(self, content: RecordDict) -> tuple[dict[str, float], float]:
        """The reply's numeric metrics (at most ``MAX_METRICS``) and its claimed example count.

        The count must be a finite number > 0; the strategy caps it later, per round.
        """
        if len(content.metric_records) != 1:
            raise ReplyError("reply must hold exactly one MetricRecord")
        record = next(iter(content.metric_records.values()))
        if len(record) > MAX_METRICS:
            raise ReplyError(f"reply holds {len(record)} metrics, at most {MAX_METRICS}")
        value = record.get(self.weighted_by_key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ReplyError(f"`{self.weighted_by_key}` must be a number, got {value!r}")
        if not 0 < value < math.inf:
            raise ReplyError(f"num-examples must be a finite number > 0, got {value}")
        metrics = {k: float(v) for k, v in record.items() if isinstance(v, int | float)}
        return metrics, float(value)

    def zo_records(self, content: RecordDict, node: int) -> tuple[bytes, tuple[ZoRecord, ...]]:
        """Decode and check a zo reply: version, this round's pool, steps, indices, sender."""
        payload = content.config_records[ZO_REPLY_KEY].get("records")
        if not isinstance(payload, bytes):
            raise ReplyError(f"zo reply: `{ZO_REPLY_KEY}.records` must be bytes")
        reply = decode_zo_reply(
            payload,
            pool_size=self.zo.pool_size,
            max_steps=self.zo.max_records,
            pool_id=seed_pool_id(self.run_seed, self.server_round, self.zo.pool_size),
            round=self.server_round,
            num_clients=self.num_clients,
            grad_encoding=self.zo.grad_encoding,
            seed_choice="derived",
            grad_scale=self.zo.grad_scale,
            grad_clip=self.zo.grad_clip,
        )
        if len(reply.records) % self.zo.perturbations:
            raise ReplyError(
                f"zo reply: {len(reply.records)} records are not whole steps of "
                f"{self.zo.perturbations} directions (zo.perturbations)"
            )
        other = self.zo_clients.setdefault(reply.client, node)
        if other != node:  # valid, but the two replies stepped along the same seeds
            log.warning(
                "round %d: nodes %d and %d both replied as zo client %d (check --partition-id)",
                self.server_round,
                other,
                node,
                reply.client,
            )
        return payload, reply.records

    def check_factors(
        self,
        factors: Mapping[str, torch.Tensor],
        num_examples: float,
        metrics: dict[str, float],
        start: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Raise :class:`ReplyError` unless a reply's factors may enter the aggregate.

        ``start`` is what the node was sent (default: the global factors). Records the
        server-measured ``update_norm`` (``||X_k - X_start||``) in ``metrics``.
        """
        start = self.global_factors if start is None else start
        validate_factors(factors, start, num_examples)
        metrics["update_norm"] = check_update_limits(
            factors,
            start,
            self.robust.max_update_norm,
            self.robust.max_relative_update,
            self.global_norm if start is self.global_factors else None,
        )
        check_lora_products(factors)
        if self.frozen_a:
            check_frozen_a(factors, start)

    def check_digest(
        self, metrics: dict[str, float], key: str, factors: Mapping[str, torch.Tensor], node: int
    ) -> float:
        """1.0 if the client's reported digest equals the server's tensors', else 0.0 (logged)."""
        if key not in metrics:
            return float("nan")
        if factors is self.global_factors:  # every synced client reports it: hash it once
            if self.global_digest is None:
                self.global_digest = factors_digest(factors)
            digest = self.global_digest
        else:
            digest = factors_digest(factors)
        exact = math.isfinite(metrics[key]) and int(metrics[key]) == digest
        if not exact:
            log.warning(
                "round %d: node %d's %s differs from the server's", self.server_round, node, key
            )
        return float(exact)
