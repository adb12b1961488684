"""Ferret on Flower: first-order clients, their updates aggregated as shared-seed coordinates.

Ferret (Shu et al., ICML 2025, arXiv 2409.06277). Downlink: a client gets the aggregates of the
rounds it missed (``fedft.v1.FerretHistory``) and applies them, or the factors themselves when
those cost fewer bytes (:func:`fedft.ferret.aggregate.prefer_replay`). Uplink: its coordinates
(``fedft.v1.FerretReply``), ``sum_b n_b`` bytes. The server checks each reply's rebuilt update like
any reply's (:mod:`server.ferret_replies`), sums the scaled coordinates per (block, seed) slot
(:func:`fedft.ferret.aggregate.aggregate_coordinates`) and applies the sum to the global factors,
exactly as every client does when it catches up.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedft.ferret.aggregate import FerretRound, aggregate_coordinates, apply_round_, prefer_replay
from fedft.ferret.blocks import state_blocks
from fedft.flower_records import FERRET_CHECKPOINT_ROUND_KEY, FERRET_HISTORY_KEY
from fedft.wire.ferret import decode_ferret_history, encode_ferret_history
from fedft.wire.order import in_zo_order
from server.ferret_replies import decode_ferret
from server.replies import ClientUpdate
from server.strategies import register_strategy
from server.strategies.fedit import FedIT
from server.strategies.history import RoundHistory


@register_strategy("ferret")
class FerretStrategy(RoundHistory[FerretRound], FedIT):
    """Sum Ferret clients' scaled coordinates per slot and apply them to the global LoRA factors.

    Keeps the history of per-round aggregates and, per node, the last round it synced to, so each
    sampled node is sent exactly what it misses (as :class:`server.strategies.zo.ZoStrategy`).

    The run's ``[ferret]`` settings come as FedIT's ``ferret`` argument.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slots: dict[int, dict[int, float]] = {}  # this round's scaled coordinates, per node
        self.encoded: dict[int, bytes] = {}  # this round's history bytes, per synced round
        self.num_blocks = 0  # known from the first round's factors (0: none seen yet)

    def state(self) -> dict:
        """The aggregates (base64 ``fedft.v1.FerretHistory``) and each node's synced round."""
        data = encode_ferret_history(self.history, self.run_seed, self.num_blocks)
        return {
            "history": base64.b64encode(data).decode(),
            "num_blocks": self.num_blocks,
            "synced": {str(k): v for k, v in self.synced.items()},
        }

    def load_state(self, state: dict) -> None:
        """Restore the history and synced rounds of a checkpoint."""
        self.num_blocks = int(state["num_blocks"])
        self.history = decode_ferret_history(
            base64.b64decode(state["history"]),
            run_seed=self.run_seed,
            pool_size=self.ferret.pool_size,
            num_blocks=self.num_blocks,
        )
        self.synced = {int(k): int(v) for k, v in state["synced"].items()}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per sampled node: its catch-up history, or the factors if that is cheaper."""
        self.encoded, self.pending, self.slots = {}, None, {}
        return super().configure_train(server_round, arrays, config, grid)

    def node_content(self, node: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """The aggregates of the rounds ``node`` missed, or the factors when they cost less."""
        self.num_blocks = len(state_blocks(self.global_factors, self.ferret.block_size))
        synced = self.synced.get(node, 0)
        missed = [h for h in self.history if h.round > synced]
        entries = sum(len(h.aggregate) for h in missed)
        numel = sum(t.numel() for t in self.global_factors.values())
        node_config = ConfigRecord(dict(config))
        content = RecordDict({"config": node_config})
        if not prefer_replay(entries, numel):
            content["arrays"] = arrays
            node_config[FERRET_CHECKPOINT_ROUND_KEY] = self.current_round - 1
        elif missed:  # nothing missed: no entry (Flower cannot count an empty value)
            if synced not in self.encoded:
                self.encoded[synced] = encode_ferret_history(missed, self.run_seed, self.num_blocks)
            node_config[FERRET_HISTORY_KEY] = self.encoded[synced]
        return content

    def decode(self, msg: Message) -> ClientUpdate:
        """Decode a Ferret reply, rebuild and check its factors, keep its scaled coordinates."""
        update, slots = decode_ferret(self.replies, msg, self.ferret)
        self.slots[update.node_id] = slots
        return update

    def aggregate_factors(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[Mapping[str, torch.Tensor], dict[str, float]]:
        """``a_slot = sum_k p_k c_k gamma_k``, applied to the global factors (server lr).

        With ``[privacy]``: equal weights, clipped (central), noised (:mod:`fedft.privacy.ferret`).
        :meth:`commit` keeps the entry only once the factors passed the checks: a failed round
        leaves the history as it was.
        """
        if self.privacy is not None:  # (sum of clipped x_k + noise) / m per slot
            aggregate = self.privacy.ferret_means(
                server_round,
                [(u.node_id, self.slots[u.node_id]) for u in updates],
                len(state_blocks(self.global_factors, self.ferret.block_size)),
                len(self.sent),
            )
        else:
            aggregate = aggregate_coordinates(
                [self.slots[u.node_id] for u in updates], [u.num_examples for u in updates]
            )
        entry = FerretRound(server_round, self.ferret.pool_size, aggregate)
        factors = {name: t.clone() for name, t in self.global_factors.items()}
        blocks = state_blocks(factors, self.ferret.block_size)
        apply_round_(in_zo_order(factors), blocks, entry, self.run_seed, self.ferret.server_lr)
        self.pending = entry
        return factors, {"ferret.slots": float(len(aggregate))}
