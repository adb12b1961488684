"""Which clients train in a round: a pure function of the run's seed, the round and who is there.

Comparing strategies is only fair when they are paired: for one seed, every strategy trains the
same clients in every round (and, since a client's batches are seeded by the run's seed, the
round and its partition, :func:`fedft.task.batch_seed`, on the same batches; the server evaluates
every strategy on the same global eval set, :func:`fedft.task.federated_data`). Flower's own
sampling draws from its random node ids, which differ from run to run, so it cannot pair; fedft
samples *partition ids* instead, by a priority that depends on nothing else::

    priority(s, r, p) = int(blake2b(f"{s}:{r}:{p}")[:8]) / 2**64       (uniform in [0, 1))
    sampled(s, r, P, n) = the n partitions of P with the lowest priority

with ``s`` the run's seed, ``r`` the round, ``P`` the partition ids available and ``n`` the sample
size. Lowest-priority selection of i.i.d. uniform keys is uniform sampling without replacement
(a random permutation's first ``n``), and it is consistent: a partition's priority does not
depend on which others are there, so when one device is missing the round samples the same
others, and the next partition in the order takes its place. ``blake2b`` is fixed by RFC 7693, so
the sample is the same on every machine and Python version (no process-seeded hash, no RNG state).

In a deployment, "the same devices" means the same partition ids: each device reports the
``--partition-id`` it was started with (``fedft client``), and two runs with the same seed train
the same partition ids in every round whatever their node ids (a SuperNode gets a new one at
every start), provided the same partition ids are connected when each round samples.

Example
-------
>>> sample_partitions(seed=0, server_round=1, available=range(10), count=3)
(3, 6, 8)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def priority(seed: int, server_round: int, partition: int) -> float:
    """The uniform key ``priority(s, r, p)`` in ``[0, 1)`` of the module docstring."""
    digest = hashlib.blake2b(f"{seed}:{server_round}:{partition}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


def sample_size(available: int, fraction: float, minimum: int) -> int:
    """How many of ``available`` clients a round trains: ``max(floor(fraction * n), minimum)``.

    As Flower's FedAvg (``fraction_train``, ``min_train_nodes``), and never more than ``available``.
    """
    return min(available, max(int(available * fraction), minimum))


def sample_partitions(
    seed: int, server_round: int, available: Iterable[int], count: int
) -> tuple[int, ...]:
    """The ``count`` partitions of ``available`` with the lowest priority, in ascending order.

    Parameters
    ----------
    seed : int
        The run's seed (``run.seed``).
    server_round : int
        The round being sampled (1 is the first).
    available : Iterable[int]
        The partition ids of the clients that can be sampled.
    count : int
        How many to sample (:func:`sample_size`); all of them if there are fewer.

    Returns
    -------
    tuple[int, ...]
        The sampled partition ids, sorted.
    """
    ranked = sorted(set(available), key=lambda p: (priority(seed, server_round, p), p))
    return tuple(sorted(ranked[: max(count, 0)]))
