"""A zo client's view of the global factors, kept in Flower's per-node state between rounds.

In a ``zo`` run the server sends what a node missed: the aggregates of the rounds since it last
synced (replayed here), or the factors themselves. A node that never synced starts from the
initial adapter, which every process builds identically (:func:`fedft.models.load_peft_model`).
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message

from clients.runtimes.torch_lora import client_model
from fedft.config import Scenario
from fedft.errors import ReplyError
from fedft.flower_records import (
    ZO_CHECKPOINT_ROUND_KEY,
    ZO_HISTORY_KEY,
    config_int,
    factors_to_record,
    record_to_factors,
)
from fedft.wire.order import in_zo_order
from fedft.wire.zo_history import decode_history
from fedft.zo.replay import replay_history_
from fedft.zo.trainable import initial_state

STATE_FACTORS = "fedft-zo-factors"
STATE_SYNC = "fedft-zo-sync"


def synced_factors(scenario: Scenario, context: Context, msg: Message) -> dict[str, torch.Tensor]:
    """Bring this node's copy of the global factors to the start of the message's round."""
    state, config = context.state, msg.content.config_records["config"]
    server_round = config_int(config, "server-round")
    if STATE_FACTORS in state.array_records:
        factors = record_to_factors(state.array_records[STATE_FACTORS])
        synced = config_int(state.config_records[STATE_SYNC], "round")
    else:
        model, _ = client_model(scenario, int(context.node_config["partition-id"]))
        factors, synced = initial_state(model, scenario.zo.trainable_modules), 0
    if "arrays" in msg.content.array_records:
        factors = record_to_factors(msg.content.array_records["arrays"])
        synced = config_int(config, ZO_CHECKPOINT_ROUND_KEY)
    history = config.get(ZO_HISTORY_KEY, b"")
    if history:
        if not isinstance(history, bytes):
            raise ReplyError(f"config entry {ZO_HISTORY_KEY!r} must be bytes")
        missed = [
            h
            for h in decode_history(
                history, scenario.run.seed, scenario.zo.pool_size, scenario.federation.num_rounds
            )
            if h.round > synced
        ]
        replay_history_(in_zo_order(factors), missed, scenario.run.seed, scenario.zo.lr)
        synced = missed[-1].round if missed else synced
    if synced != server_round - 1:
        raise ReplyError(
            f"zo client synced to round {synced}, but round {server_round} needs {server_round - 1}"
        )
    state.array_records[STATE_FACTORS] = factors_to_record(factors)
    state.config_records[STATE_SYNC] = ConfigRecord({"round": synced})
    return factors
