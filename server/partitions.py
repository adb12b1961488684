"""Which node holds which partition, so a round can sample partitions (:mod:`fedft.sampling`).

Flower addresses nodes by ids it draws at random (a new one at every SuperNode start), while a
client's data, batches and zo seeds follow its partition id (``node_config["partition-id"]``:
the simulation's index, or ``fedft client --partition-id``). The server asks each node it has not
heard from once, with a ``query.partition`` message that the ClientApp answers from its
node_config without loading anything (``clients/app.py``), and samples among the partitions of
the connected nodes it knows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

log = logging.getLogger("fedft.server")

PARTITION_QUERY = f"{MessageType.QUERY}.partition"
PARTITION_KEY = "partition-id"


@dataclass
class PartitionMap:
    """The partition id each node reported, checked against the run's number of clients.

    Parameters
    ----------
    num_clients : int, optional
        A reported partition id must be in ``[0, num_clients)``.
    """

    num_clients: int | None = None
    partition_of: dict[int, int] = field(default_factory=dict)  # node id -> partition id

    def queries(self, connected: Iterable[int]) -> list[Message]:
        """A ``query.partition`` message to every connected node whose partition is unknown."""
        unknown = sorted(set(connected) - set(self.partition_of))
        return [
            Message(RecordDict({"config": ConfigRecord()}), n, PARTITION_QUERY) for n in unknown
        ]

    def learn(self, replies: Iterable[Message], sent: Sequence[Message]) -> None:
        """Keep the partition id each reply to ``sent`` reports; log (and skip) what is not one."""
        asked = {m.metadata.dst_node_id for m in sent}
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                log.warning("node %d did not say its partition: %s", node, msg.error.reason)
                continue
            records = list(msg.content.metric_records.values())
            value = records[0].get(PARTITION_KEY) if len(records) == 1 else None
            limit = self.num_clients
            ok = isinstance(value, int) and value >= 0 and (limit is None or value < limit)
            if node not in asked or not ok:
                log.warning("node %d: ignored partition reply %r", node, value)
                continue
            self.partition_of[node] = int(value)  # type: ignore[arg-type]

    def holders(self, connected: Iterable[int]) -> dict[int, int]:
        """Partition id -> node, among the connected nodes whose partition is known.

        Two connected nodes naming the same partition (a misconfigured ``--partition-id``) are
        one partition: the lower node id holds it, and the other is logged and left out.
        """
        out: dict[int, int] = {}
        for node in sorted(set(connected) & set(self.partition_of)):
            partition = self.partition_of[node]
            if partition in out:
                log.warning(
                    "nodes %d and %d both hold partition %d; node %d is left out",
                    out[partition],
                    node,
                    partition,
                    node,
                )
                continue
            out[partition] = node
        return out
