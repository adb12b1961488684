"""Ferret replies on the server: decode the coordinates, rebuild the client's factors, check them.

A ``fedft.v1.FerretReply`` (:mod:`fedft.wire.ferret`) is decoded against the run's config (block
count of the round's factors, ``ferret.pool_size``, the round's pool and round, the scenario's
client count, ``ferret.coord_encoding``); the client's factors are rebuilt from the round's start
(:func:`fedft.ferret.aggregate.rebuild_`) and go through the same checks as every reply's
(:meth:`server.replies.ReplyCodec.check_factors`: layout, finiteness, update-norm limits). A
``ferret`` run aggregates the scaled coordinates per slot; a ``fedit`` or ``lora_fair`` round
averages the rebuilt factors with the first-order clients' (mixed rounds).
"""

from __future__ import annotations

from flwr.app import Message

from fedft.config import FerretSection
from fedft.errors import ReplyError
from fedft.ferret.aggregate import client_slots, rebuild_
from fedft.ferret.blocks import FerretError, state_blocks
from fedft.flower_records import FERRET_REPLY_KEY
from fedft.wire.ferret import decode_ferret_reply
from fedft.wire.order import in_zo_order
from fedft.zo.seeds import seed_pool_id
from server.replies import ClientUpdate, ReplyCodec


def decode_ferret(
    codec: ReplyCodec, msg: Message, ferret: FerretSection
) -> tuple[ClientUpdate, dict[int, float]]:
    """A checked :class:`ClientUpdate` (rebuilt factors) and the reply's scaled slots.

    Raises
    ------
    ReplyError
        If the reply is not a valid Ferret reply for this round, or its rebuilt factors fail a
        check (the reply is then dropped).
    """
    content = msg.content
    if FERRET_REPLY_KEY not in content.config_records:
        raise ReplyError(f"a ferret reply holds a `{FERRET_REPLY_KEY}` ConfigRecord and metrics")
    payload = content.config_records[FERRET_REPLY_KEY].get("coords")
    if not isinstance(payload, bytes):
        raise ReplyError(f"ferret reply: `{FERRET_REPLY_KEY}.coords` must be bytes")
    metrics, num_examples = codec.reply_metrics(content)
    blocks = state_blocks(codec.global_factors, ferret.block_size)
    server_round, pool_size = codec.server_round, ferret.pool_size
    pool_id = seed_pool_id(codec.run_seed, server_round, pool_size)
    reply = decode_ferret_reply(
        payload,
        num_blocks=len(blocks),
        pool_size=pool_size,
        pool_id=pool_id,
        round=server_round,
        num_clients=codec.num_clients,
        encoding=ferret.coord_encoding,
    )
    node = msg.metadata.src_node_id
    metrics["ferret_synced_exact"] = codec.check_digest(
        metrics, "start_digest", codec.global_factors, node
    )
    factors = {name: t.detach().clone() for name, t in codec.global_factors.items()}
    window = {"round": server_round, "client": reply.client, "pool_size": pool_size}
    try:
        rebuild_(
            in_zo_order(factors),
            blocks,
            reply.coordinates,
            run_seed=codec.run_seed,
            scaling=ferret.scaling,
            server_lr=ferret.server_lr,
            **window,
        )
        slots = client_slots(
            reply.coordinates, blocks, pool_id=pool_id, scaling=ferret.scaling, **window
        )
    except FerretError as err:
        raise ReplyError(f"ferret reply: {err}") from None
    codec.check_factors(factors, num_examples, metrics)
    update = ClientUpdate(
        node_id=node,
        factors=factors,
        num_examples=num_examples,
        metrics=metrics,
        bytes_up=len(payload),
    )
    return update, slots
