"""Shared-randomness zeroth-order federated fine-tuning (FedKSeed-style) on Flower.

Downlink: a client gets the aggregates of the rounds it missed (``fedft.v1.ZoHistory``) and
replays them, or the factors themselves when the history would cost more bytes
(:func:`fedft.zo.replay.prefer_replay`). Uplink: its ``(seed index, g)`` records, one byte a
step. The server sums ``g`` per seed (:func:`fedft.zo.replay.aggregate_records`) and replays
the sum onto the global factors; it never sees a tensor from a client.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedft.errors import ReplyError
from fedft.flower_records import (
    ZO_CHECKPOINT_ROUND_KEY,
    ZO_HISTORY_KEY,
    ZO_MASK_DIGEST_KEY,
    ZO_MASK_KEY,
)
from fedft.wire.order import in_zo_order
from fedft.wire.zo_history import decode_history, encode_history
from fedft.zo.replay import RoundAggregate, aggregate_records, prefer_replay, replay_history_
from fedft.zo.sparse import SparseMask
from server.replies import ClientUpdate
from server.strategies import register_strategy
from server.strategies.fedit import FedIT
from server.strategies.history import RoundHistory

log = logging.getLogger("fedft.server")


@register_strategy("zo")
class ZoStrategy(RoundHistory[RoundAggregate], FedIT):
    """Aggregate zo clients' scalars per seed and replay them onto the global LoRA factors.

    Keeps the history of per-round aggregates and, per node, the last round it synced to, so each
    sampled node is sent exactly what it misses.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoded: dict[int, bytes] = {}  # this round's history bytes, per synced round
        self.sparse_mask: SparseMask | None = None  # zo.sparse_fraction > 0 (server.federation)

    def state(self) -> dict:
        """The aggregate history (base64 ``fedft.v1.ZoHistory``) and each node's synced round."""
        history = base64.b64encode(encode_history(self.history, self.run_seed)).decode()
        synced = {str(k): v for k, v in self.synced.items()}
        return {"history": history, "synced": synced, **super().state()}

    def load_state(self, state: dict) -> None:
        """Restore the history and synced rounds of a checkpoint."""
        self.history = decode_history(
            base64.b64decode(state["history"]), self.run_seed, self.zo.pool_size
        )
        self.synced = {int(k): int(v) for k, v in state["synced"].items()}
        super().load_state(state)  # the announced int8 scales (adaptive rule)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per sampled node: its catch-up history, or the factors if that is cheaper."""
        self.encoded, self.pending = {}, None
        return super().configure_train(server_round, arrays, config, grid)

    def node_content(self, node: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """The aggregates of the rounds ``node`` missed, or the factors when they cost less."""
        synced = self.synced.get(node, 0)
        missed = [h for h in self.history if h.round > synced]
        entries = sum(len(h.aggregate) for h in missed)
        numel = sum(t.numel() for t in self.global_factors.values())
        node_config = ConfigRecord(dict(config))
        content = RecordDict({"config": node_config})
        if self.sparse_mask is not None:  # sent with the scenario's text: until the node holds it
            node_config[ZO_MASK_DIGEST_KEY] = self.sparse_mask.digest()
            if node not in self.scenario_holders:
                node_config[ZO_MASK_KEY] = self.sparse_mask.encode()
        if not prefer_replay(entries, self.zo.pool_size, numel):
            content["arrays"] = arrays
            node_config[ZO_CHECKPOINT_ROUND_KEY] = self.current_round - 1
        elif missed:  # nothing missed: no entry (Flower cannot count an empty value)
            if synced not in self.encoded:
                self.encoded[synced] = encode_history(missed, self.run_seed)
            node_config[ZO_HISTORY_KEY] = self.encoded[synced]
        return content

    def decode(self, msg: Message) -> ClientUpdate:
        """Decode a zo reply (no tensors: the records are aggregated, not rebuilt one by one)."""
        return self.replies.decode_zo(msg)

    def aggregate_factors(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[Mapping[str, torch.Tensor], dict[str, float]]:
        """``a_s = sum_k p_k sum_t g_kt [s_kt = s]``, replayed onto the global factors.

        Checked finite before it is replayed, and the replayed factors again before
        :meth:`commit` keeps the entry: a failed round leaves the history as it was.
        """
        if self.privacy is not None:  # (sum of clipped g + noise) / m, per seed
            aggregate = self.privacy.zo_means(server_round, updates, len(self.sent))
            if self.zo.perturbations > 1:  # a client steps lr / n along each of n directions
                n = self.zo.perturbations
                aggregate = {s: float(np.float32(a / n)) for s, a in aggregate.items()}
        else:
            aggregate = aggregate_records(
                [u.records for u in updates],
                [u.num_examples for u in updates],
                self.zo.perturbations,
            )
        bad = [s for s, a in aggregate.items() if not math.isfinite(a)]
        if bad:
            raise ReplyError(f"the aggregate of seed {bad[0]} is not finite in float32")
        entry = RoundAggregate(server_round, self.zo.pool_size, aggregate)
        factors = {name: t.clone() for name, t in self.global_factors.items()}
        replay_history_(in_zo_order(factors), [entry], self.run_seed, self.zo.lr)
        self.pending = entry
        return factors, {"zo.seeds": float(len(aggregate))}
