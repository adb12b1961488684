"""An index of each SuperNode's waiting instructions in Flower's in-memory link state.

Why: Flower 1.39's simulation engine (``flwr.server.superlink.fleet.vce.vce_api.
add_messages_to_queue``) asks every virtual SuperNode's inbox for an instruction every 0.1 s,
and ``InMemoryLinkState.get_message_ins(node_id)`` walks *every* stored instruction (delivered
ones too, until their replies are pulled), re-checking each one's expiry and federation, until
it finds one for that node. With ``v`` SuperNodes and ``m`` instructions in flight a sweep costs
``v * m`` checks (~13 us each on a busy 2-core machine): 1,000 clients a round would make one
sweep ~13 s, holding the state's lock and the driver's GIL. Flower has no setting for it.

What: :func:`index_inboxes` replaces ``get_message_ins`` and ``store_message_ins`` on
``InMemoryLinkState`` (this process only) by versions that keep, per destination node, the ids
of its stored, undelivered instructions, and look only at those: the same checks per candidate
(``_check_stored_messages``: expiry, federation), the same ``delivered_at`` marking and the same
answer as Flower's walk, in O(that node's instructions). The one difference: a call no longer
expires *other* nodes' instructions on the way (each is still expired when its own node asks,
and when the server pulls its replies). If Flower's internals are not as expected, nothing is
replaced (logged). ``fedft simulate`` calls it before it starts the engine.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("fedft")

_WAITING = "_fedft_waiting"  # attribute on a state: dst node id -> {message id: None}, in order
FLOWER_METHODS: dict[str, Any] = {}  # Flower's own methods, once replaced (tests compare them)


def index_inboxes() -> bool:
    """Make ``InMemoryLinkState`` find a node's instructions by an index; True if it does now.

    Idempotent. Returns False (and leaves Flower as it is) if the class lacks what the index
    relies on (another Flower version).
    """
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.supercore.date import now

    cls: Any = InMemoryLinkState
    if FLOWER_METHODS:
        return True
    uses = set(cls.__init__.__code__.co_names) | set(cls.get_message_ins.__code__.co_names)
    if not ({"lock", "message_ins_store", "_check_stored_messages"} <= uses):
        log.warning("Flower's InMemoryLinkState changed: its inboxes are not indexed")
        return False
    flower_store = cls.store_message_ins

    def store_message_ins(self: Any, message: Any) -> str | None:
        message_id = flower_store(self, message)
        if message_id is not None:
            with self.lock:
                stored = self.message_ins_store.get(message_id)
                if stored is not None and stored.metadata.delivered_at == "":
                    waiting = self.__dict__.setdefault(_WAITING, {})
                    waiting.setdefault(stored.metadata.dst_node_id, {})[message_id] = None
        return message_id

    def get_message_ins(
        self: Any, node_id: int, limit: int | None, *, run_id: int | None = None
    ) -> list[Any]:
        """Flower's ``get_message_ins``, looking only at the instructions stored for ``node_id``."""
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        found: list[Any] = []
        with self.lock:
            ids = self.__dict__.get(_WAITING, {}).get(node_id)
            for msg_id in list(ids or ()):
                self._check_stored_messages({msg_id})  # may expire (delete) it
                msg = self.message_ins_store.get(msg_id)
                if msg is None or msg.metadata.delivered_at != "":
                    del ids[msg_id]
                    continue
                if run_id is not None and msg.metadata.run_id != run_id:
                    continue
                found.append(msg)
                del ids[msg_id]
                if limit and len(found) == limit:
                    break
        delivered_at = now().isoformat()
        for msg in found:
            msg.metadata.delivered_at = delivered_at
        return found

    FLOWER_METHODS.update(store_message_ins=flower_store, get_message_ins=cls.get_message_ins)
    cls.store_message_ins = store_message_ins
    cls.get_message_ins = get_message_ins
    return True
