"""Sampling by partition (:mod:`fedft.sampling`): which node holds which partition, and who trains.

Flower addresses nodes by ids it draws at random (a new one at every SuperNode start), while a
client's data, batches and zo seeds follow its partition id (``node_config["partition-id"]``:
the simulation's index, or ``fedft client --partition-id``). With ``fraction_train < 1`` the
server asks each node it has not heard from once, with a ``query.partition`` message that the
ClientApp answers from its node_config without loading anything (``clients/app.py``), and a round
trains the partitions :func:`fedft.sampling.sample_partitions` picks among those of the
connected nodes it knows: the same for every strategy with the same seed (paired runs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedft.sampling import sample_partitions, sample_size

log = logging.getLogger("fedft.server")

PARTITION_QUERY = f"{MessageType.QUERY}.partition"
PARTITION_KEY = "partition-id"


@dataclass
class PartitionSampler:
    """The partition id each node reported, and the round's sample of them.

    Parameters
    ----------
    seed : int
        The run's seed (``run.seed``).
    num_clients : int, optional
        A reported partition id must be in ``[0, num_clients)``.
    """

    seed: int = 0
    num_clients: int | None = None
    partition_of: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    asked: set[int] = field(default_factory=set)  # nodes the last queries went to
    sampled: tuple[int, ...] = ()  # the last sampled round's partitions

    def queries(self, connected: Iterable[int]) -> list[Message]:
        """A ``query.partition`` message to every connected node whose partition is unknown."""
        self.asked = set(connected) - set(self.partition_of)
        content = RecordDict({"config": ConfigRecord()})
        return [Message(content, node, PARTITION_QUERY) for node in sorted(self.asked)]

    def learn(self, replies: Iterable[Message]) -> None:
        """Keep the partition id each reply to :meth:`queries` reports; log what is not one."""
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                log.warning("node %d did not say its partition: %s", node, msg.error.reason)
                continue
            records = list(msg.content.metric_records.values())
            value = records[0].get(PARTITION_KEY) if len(records) == 1 else None
            limit = self.num_clients
            ok = isinstance(value, int) and value >= 0 and (limit is None or value < limit)
            if node not in self.asked or not ok or not isinstance(value, int):  # (ok says int)
                log.warning("node %d: ignored partition reply %r", node, value)
                continue
            self.partition_of[node] = int(value)

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

    def sample(
        self, server_round: int, connected: Iterable[int], fraction: float, minimum: int
    ) -> list[int]:
        """The nodes holding the partitions the round trains, in partition order.

        :func:`~fedft.sampling.sample_size` of the known partitions, picked by
        :func:`~fedft.sampling.sample_partitions`.
        """
        holders = self.holders(connected)
        count = sample_size(len(holders), fraction, minimum)
        self.sampled = sample_partitions(self.seed, server_round, holders, count)
        log.info("round %d: sampled partitions %s", server_round, list(self.sampled))
        return [holders[p] for p in self.sampled]
