"""Reply screening: what a round's replies pass before any strategy may aggregate them.

A reply is input from an untrusted party (``docs/robustness.md``, "The checks, in order"). This
module is the server's side of that table, shared by every strategy:

1. :func:`screen_replies`: one reply per node (a second one, or one from a node that was sent
   nothing, is dropped); each reply decoded and checked by the strategy's codec
   (:class:`server.replies.ReplyCodec`); then, over the round's valid replies,
   :func:`drop_norm_outliers` (>= 3 replies) and :func:`bound_weights`;
2. :func:`has_quorum`: at least ``federation.min_train_clients`` valid replies;
3. :func:`select_replies`: Krum / Multi-Krum's selection, if ``robust.aggregator`` asks for it;
4. the strategy's aggregate, then :func:`check_aggregate` before it becomes the global state.

Every drop or cap is one log line naming the round, the node and the reason. The maths behind each
step is Flower-free, in :mod:`fedft.algorithms.validation` and :mod:`fedft.algorithms.robust`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from flwr.app import Message

from fedft.algorithms.robust import krum_select
from fedft.algorithms.validation import (
    bounded_weights,
    check_lora_products,
    norm_outliers,
    update_norm,
    validate_factors,
)
from fedft.config import RobustSection
from fedft.errors import ReplyError
from server.replies import ClientUpdate

log = logging.getLogger("fedft.server")


@dataclass(frozen=True)
class Screened:
    """A round's replies after :func:`screen_replies`.

    Attributes
    ----------
    updates : list[ClientUpdate]
        The valid replies, in arrival order, their weights bounded.
    answered : frozenset[int]
        Nodes whose reply was not an error (whether it was kept or dropped).
    failed : frozenset[int]
        Nodes whose instruction came back as an error (the node may have restarted).
    """

    updates: list[ClientUpdate]
    answered: frozenset[int]
    failed: frozenset[int]


def screen_replies(
    server_round: int,
    replies: Iterable[Message],
    sent: Sequence[Message],
    decode: Callable[[Message], ClientUpdate],
    global_factors: Mapping[str, torch.Tensor],
    robust: RobustSection,
) -> Screened:
    """The round's valid replies: one per node, decoded and checked, outliers out, weights capped.

    Parameters
    ----------
    server_round : int
        The round, for log lines.
    replies : Iterable[Message]
        What came back for the round's instructions ``sent``.
    sent : Sequence[Message]
        The round's instructions: a reply from a node not among their destinations is dropped.
    decode : callable
        The strategy's decoder (e.g. :meth:`server.replies.ReplyCodec.decode`), raising
        :class:`~fedft.errors.ReplyError` for a reply that may not be aggregated.
    global_factors : Mapping[str, torch.Tensor]
        The round's global factors, against which update norms are measured.
    robust : RobustSection
        ``norm_outlier_factor``, ``max_num_examples`` and ``median_multiple``.

    Returns
    -------
    Screened
        The valid updates and which nodes answered or failed. Never raises for what a reply holds.
    """
    destinations = {m.metadata.dst_node_id for m in sent}
    sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
    updates: list[ClientUpdate] = []
    answered: set[int] = set()
    failed: set[int] = set()
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            # An error reply comes from the SuperLink, not the node: the instruction says which.
            node = sent_to.get(msg.metadata.reply_to_message_id, node)
            failed.add(node)
            log.warning("round %d: node %d failed: %s", server_round, node, msg.error.reason)
            continue
        if node in answered or node not in destinations:
            why = "a second reply this round" if node in answered else "it was sent nothing"
            log.warning("round %d: dropped reply of node %d: %s", server_round, node, why)
            continue
        answered.add(node)
        try:
            updates.append(decode(msg))
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
    updates = drop_norm_outliers(server_round, updates, global_factors, robust.norm_outlier_factor)
    return Screened(
        bound_weights(server_round, updates, robust), frozenset(answered), frozenset(failed)
    )


def drop_norm_outliers(
    server_round: int,
    updates: list[ClientUpdate],
    global_factors: Mapping[str, torch.Tensor],
    factor: float,
) -> list[ClientUpdate]:
    """Drop, with a log line naming the node, replies whose change dwarfs the others'.

    See :func:`fedft.algorithms.validation.norm_outliers`; needs >= 3 replies with factors.
    """
    if len(updates) < 3 or not all(u.factors for u in updates):
        return updates
    norms = [
        update_norm(u.factors, global_factors) if u.update_norm is None else u.update_norm
        for u in updates
    ]
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


def bound_weights(
    server_round: int, updates: list[ClientUpdate], robust: RobustSection
) -> list[ClientUpdate]:
    """Cap each reply's weight (:func:`fedft.algorithms.validation.bounded_weights`), logged."""
    claims = [u.num_examples for u in updates]
    weights = bounded_weights(claims, robust.max_num_examples, robust.median_multiple)
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
    return [dataclasses.replace(u, num_examples=w) for u, w in zip(updates, weights, strict=True)]


def has_quorum(server_round: int, updates: Sequence[ClientUpdate], needed: int) -> bool:
    """Whether the round has ``needed`` (at least 1) valid replies; logged when it has not."""
    needed = max(1, needed)
    if len(updates) >= needed:
        return True
    log.warning(
        "round %d: %d valid replies, fewer than the %d a round needs "
        "(federation.min_train_clients); the global state is unchanged",
        server_round,
        len(updates),
        needed,
    )
    return False


def select_replies(
    server_round: int, updates: list[ClientUpdate], robust: RobustSection
) -> list[ClientUpdate]:
    """The replies Krum / Multi-Krum keep (``robust.aggregator``); all of them otherwise."""
    aggregator = robust.aggregator
    if aggregator not in ("krum", "multi_krum") or not all(u.factors for u in updates):
        return updates
    f = robust.byzantine
    keep = 1 if aggregator == "krum" else max(1, len(updates) - f)
    kept = krum_select([u.factors for u in updates], f, keep)
    left = [u.node_id for k, u in enumerate(updates) if k not in kept]
    if left:
        log.info("round %d: %s left out nodes %s", server_round, aggregator, left)
    return [updates[k] for k in kept]


def check_aggregate(
    factors: Mapping[str, torch.Tensor], global_factors: Mapping[str, torch.Tensor]
) -> None:
    """Raise :class:`~fedft.errors.ReplyError` unless the aggregate may become the global state.

    The global state's names, shapes and dtype, finite values, and every module's ``B A`` finite.
    """
    validate_factors(factors, global_factors, 1.0)
    check_lora_products(factors)
