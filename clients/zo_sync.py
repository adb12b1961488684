"""A zo client's view of the global factors, kept in Flower's per-node state between rounds.

In a ``zo`` run the server sends what a node missed: the aggregates of the rounds since it last
synced (replayed here), or the factors themselves. A node that never synced starts from the
initial adapter, which every process builds identically (:func:`fedft.models.load_peft_model`).

With ``numpy`` (an ONNX Runtime node) the factors are numpy arrays throughout and no torch is
imported: the initial adapter is the edge bundle's copy (:meth:`EdgeBundle.initial_factors`), the
replay :func:`fedft.zo.replay.replay_history_` on numpy arrays (torch's bits).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Context, Message

from fedft.config import Scenario
from fedft.edge.bundle import INITIAL_FACTORS
from fedft.errors import ConfigError, ReplyError
from fedft.flower_records import (
    ZO_CHECKPOINT_ROUND_KEY,
    ZO_HISTORY_KEY,
    ZO_MASK_DIGEST_KEY,
    ZO_MASK_KEY,
    config_int,
    factors_to_record,
    record_to_arrays,
    record_to_factors,
)
from fedft.wire.order import in_zo_order
from fedft.wire.zo_history import decode_history
from fedft.zo.replay import replay_history_

if TYPE_CHECKING:
    from fedft.zo.mask import SparseMask

STATE_FACTORS = "fedft-zo-factors"
STATE_SYNC = "fedft-zo-sync"
STATE_MASK = "fedft-zo-mask"


def install_mask(scenario: Scenario, context: Context, config: ConfigRecord) -> None:
    """Hook the run's sparse mask onto this node's model (``zo.sparse_fraction > 0``).

    The server sends the mask once (kept in the node's state) and its digest every round; a
    node whose mask is not the announced one refuses the round rather than train another set.
    """
    from clients.runtimes.torch_lora import client_model
    from fedft.zo.sparse import SparseMask, install_, installed

    model, _ = client_model(scenario, int(context.node_config["partition-id"]))
    sent = config.get(ZO_MASK_KEY, b"")
    if sent:
        if not isinstance(sent, bytes):
            raise ReplyError(f"config entry {ZO_MASK_KEY!r} must be bytes")
        context.state.config_records[STATE_MASK] = ConfigRecord({"mask": sent})
        current = install_(model, SparseMask.decode(sent))
    else:
        found = installed(model)
        if found is None:
            if STATE_MASK not in context.state.config_records:
                raise ReplyError("zo.sparse_fraction: this node never received the sparse mask")
            stored = context.state.config_records[STATE_MASK]["mask"]
            found = install_(model, SparseMask.decode(stored))  # type: ignore[arg-type]
        current = found
    announced = config.get(ZO_MASK_DIGEST_KEY, "")
    if current.digest != announced:
        raise ReplyError(
            f"sparse mask {current.digest[:12]} is not the run's ({str(announced)[:12]})"
        )


_ORT_MASKS: dict[int, SparseMask] = {}  # partition -> its decoded mask (ONNX Runtime nodes)


def ort_mask(context: Context, config: ConfigRecord) -> SparseMask:
    """The run's sparse mask on an ONNX Runtime node, torch-free: :func:`install_mask`'s checks.

    Decoded once when the server sends it (and kept in the node's state), then reused while its
    digest is the one the server announces.
    """
    from fedft.zo.mask import SparseMask

    partition = int(context.node_config["partition-id"])
    announced = config.get(ZO_MASK_DIGEST_KEY, "")
    sent = config.get(ZO_MASK_KEY, b"")
    mask = _ORT_MASKS.get(partition)
    if sent:
        if not isinstance(sent, bytes):
            raise ReplyError(f"config entry {ZO_MASK_KEY!r} must be bytes")
        context.state.config_records[STATE_MASK] = ConfigRecord({"mask": sent})
        mask = SparseMask.decode(sent)
    elif mask is None or mask.digest() != announced:
        if STATE_MASK not in context.state.config_records:
            raise ReplyError("zo.sparse_fraction: this node never received the sparse mask")
        stored = context.state.config_records[STATE_MASK]["mask"]
        mask = SparseMask.decode(stored)  # type: ignore[arg-type]
    if mask.digest() != announced:
        raise ReplyError(
            f"sparse mask {mask.digest()[:12]} is not the run's ({str(announced)[:12]})"
        )
    _ORT_MASKS[partition] = mask
    return mask


def node_mask(partition_id: int) -> SparseMask:
    """The mask :func:`ort_mask` checked for ``partition_id`` this round."""
    mask = _ORT_MASKS.get(partition_id)
    if mask is None:
        raise ReplyError(f"zo.sparse_fraction: partition {partition_id} holds no sparse mask")
    return mask


def _torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except ImportError:
        return False


def _initial_factors(scenario: Scenario, partition_id: int, numpy: bool) -> dict[str, Any]:
    if numpy and scenario.zo.sparse:  # the mask's zero deltas
        return node_mask(partition_id).initial_arrays()
    if numpy:  # the bundle's copy: no torch model on this node
        if scenario.zo.trainable_modules:
            raise ConfigError("zo.trainable_modules", "an ort node perturbs LoRA factors only")
        from clients.runtimes.ort_lora import edge_bundle

        bundle = edge_bundle(scenario)
        if bundle.file(INITIAL_FACTORS).is_file() or not _torch_installed():
            return bundle.initial_factors()  # (an older bundle without it: torch's, below)
    from clients.runtimes.torch_lora import client_model
    from fedft.zo.trainable import initial_state

    model, _ = client_model(scenario, partition_id)
    state = initial_state(model, scenario.zo.trainable_modules)
    return {k: v.numpy() for k, v in state.items()} if numpy else dict(state)


def synced_factors(
    scenario: Scenario, context: Context, msg: Message, numpy: bool = False
) -> dict[str, Any]:
    """Bring this node's copy of the global factors to the start of the message's round.

    Torch tensors, or with ``numpy`` float32 numpy arrays (the same values).
    """
    state, config = context.state, msg.content.config_records["config"]
    server_round = config_int(config, "server-round")
    if scenario.zo.sparse and numpy:
        ort_mask(context, config)
    elif scenario.zo.sparse:
        install_mask(scenario, context, config)
    unpack = record_to_arrays if numpy else record_to_factors
    factors: dict[str, Any]
    if STATE_FACTORS in state.array_records:
        factors = unpack(state.array_records[STATE_FACTORS])
        synced = config_int(state.config_records[STATE_SYNC], "round")
    else:
        partition_id = int(context.node_config["partition-id"])
        factors, synced = _initial_factors(scenario, partition_id, numpy), 0
    if "arrays" in msg.content.array_records:
        factors = unpack(msg.content.array_records["arrays"])
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
