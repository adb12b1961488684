"""A Ferret client's view of the global factors, kept in Flower's per-node state between rounds.

In a ``ferret`` run the server sends what a node missed: the aggregates of the rounds since it last
synced (applied here, :func:`fedft.ferret.aggregate.replay_history_`), or the factors themselves. A
node that never synced starts from the initial adapter (or the initial weights of
``ferret.trainable_modules``), which every process builds identically.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message

from clients.runtimes.torch_lora import client_model
from fedft.config import Scenario
from fedft.errors import ReplyError
from fedft.ferret.aggregate import replay_history_
from fedft.ferret.blocks import state_blocks
from fedft.flower_records import (
    FERRET_CHECKPOINT_ROUND_KEY,
    FERRET_HISTORY_KEY,
    factors_to_record,
    record_to_factors,
)
from fedft.wire.ferret import decode_ferret_history
from fedft.wire.order import in_zo_order
from fedft.zo.trainable import initial_state

STATE_FACTORS = "fedft-ferret-factors"
STATE_SYNC = "fedft-ferret-sync"


def _round(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReplyError(f"ferret client: `{what}` must be an integer, got {value!r}")
    return value


def synced_factors(
    scenario: Scenario, context: Context, msg: Message, numpy: bool = False
) -> dict[str, torch.Tensor]:
    """Bring this node's copy of the global factors to the start of the message's round.

    ``numpy``: replay the missed aggregates on numpy arrays (an ONNX Runtime node, which needs
    no torch for its own maths); the same bits as torch's (:mod:`fedft.ferret.projection`).
    """
    state, config = context.state, msg.content.config_records["config"]
    server_round = _round(config["server-round"], "server-round")
    if STATE_FACTORS in state.array_records:
        factors = record_to_factors(state.array_records[STATE_FACTORS])
        synced = _round(state.config_records[STATE_SYNC]["round"], STATE_SYNC)
    else:
        partition = _round(context.node_config["partition-id"], "partition-id")
        model, _ = client_model(scenario, partition)
        factors, synced = initial_state(model, scenario.trained_modules), 0
    if "arrays" in msg.content.array_records:
        factors = record_to_factors(msg.content.array_records["arrays"])
        synced = _round(config[FERRET_CHECKPOINT_ROUND_KEY], FERRET_CHECKPOINT_ROUND_KEY)
    history = config.get(FERRET_HISTORY_KEY, b"")
    if not isinstance(history, bytes):
        raise ReplyError(f"ferret client: `{FERRET_HISTORY_KEY}` must be bytes")
    if history:
        ferret = scenario.ferret
        blocks = state_blocks(factors, ferret.block_size)
        rounds = decode_ferret_history(
            history,
            run_seed=scenario.run.seed,
            pool_size=ferret.pool_size,
            num_blocks=len(blocks),
            max_round=scenario.federation.num_rounds,
        )
        missed = [h for h in rounds if h.round > synced]
        view: dict[str, Any] = factors
        if numpy:
            view = {name: t.detach().cpu().numpy().copy() for name, t in factors.items()}
        replay_history_(in_zo_order(view), blocks, missed, scenario.run.seed, ferret.server_lr)
        if numpy:
            factors = {name: torch.from_numpy(a) for name, a in view.items()}
        synced = missed[-1].round if missed else synced
    if synced != server_round - 1:
        raise ReplyError(
            f"ferret client synced to round {synced}, but round {server_round} needs "
            f"{server_round - 1}"
        )
    state.array_records[STATE_FACTORS] = factors_to_record(factors)
    state.config_records[STATE_SYNC] = ConfigRecord({"round": synced})
    return factors
