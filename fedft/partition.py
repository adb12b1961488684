"""Split examples across clients: IID, Dirichlet over a key, or one client per key value.

Every partitioner returns one ``numpy`` array of example indices per client (``int64``, sorted);
the arrays are disjoint and together cover ``range(num_examples)``. Randomness comes from
``numpy.random.default_rng(seed)`` only, so a seed fixes the split on every platform.

:data:`PARTITIONERS` maps each ``partition.method`` to its partitioner behind one signature; adding
a method is a function here, its entry there and its name in ``PartitionConfig.method``'s
``Literal`` (``tests/unit/test_partition.py`` checks the two agree).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedft.errors import FedftError

if TYPE_CHECKING:
    from fedft.config import PartitionConfig

__all__ = [
    "PARTITIONERS",
    "PartitionError",
    "Partitioner",
    "dirichlet",
    "iid",
    "natural",
    "train_eval_split",
]

MAX_DIRICHLET_TRIES = 100
"""Draws :func:`dirichlet` makes before giving up on giving every client ``min_size`` examples."""


class PartitionError(FedftError, ValueError):
    """The examples cannot be split as asked (too few, wrong client count, hopeless skew)."""


def iid(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle the examples and deal them into ``num_clients`` near-equal shares.

    Parameters
    ----------
    num_examples : int
        Examples to split, indexed ``0 .. num_examples - 1``.
    num_clients : int
        Number of shares; sizes differ by at most one.
    seed : int
        Seeds the shuffle.

    Returns
    -------
    list of numpy.ndarray
        One sorted index array per client.

    Raises
    ------
    PartitionError
        ``num_clients < 1`` or more clients than examples.
    """
    _check_sizes(num_examples, num_clients)
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(share) for share in np.array_split(order, num_clients)]


def dirichlet(
    keys: Sequence[str], num_clients: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Label-skewed split: each key value's examples go to clients in Dir(alpha) proportions.

    For each distinct key value (in sorted order), draw ``p ~ Dir(alpha * 1_K)`` over the ``K``
    clients and cut that value's shuffled examples at ``cumsum(p)`` (Hsu et al., 2019,
    arXiv:1909.06335). Small ``alpha`` gives each client few key values; large ``alpha`` tends to
    IID. If a client gets fewer than ``min_size`` examples the whole draw is repeated, at most
    :data:`MAX_DIRICHLET_TRIES` times.

    Parameters
    ----------
    keys : sequence of str
        The key of each example (``Example.key``).
    num_clients : int
        Number of clients.
    alpha : float
        Concentration (> 0), ``partition.alpha``.
    seed : int
        Seeds every draw.
    min_size : int
        Fewest examples a client may get (>= 1).

    Returns
    -------
    list of numpy.ndarray
        One sorted index array per client.

    Raises
    ------
    PartitionError
        Bad arguments, more clients than examples, or no draw met ``min_size``.
    """
    if alpha <= 0 or min_size < 1:
        raise PartitionError(
            f"`partition.alpha` must be > 0 and min_size >= 1, got {alpha}, {min_size}"
        )
    _check_sizes(len(keys), num_clients, min_size)
    key_array = np.asarray(keys, dtype=object)
    groups = [np.flatnonzero(key_array == value) for value in sorted(set(keys))]
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DIRICHLET_TRIES):
        shares = _dirichlet_draw(groups, num_clients, alpha, rng)
        if min(len(share) for share in shares) >= min_size:
            return [np.sort(share) for share in shares]
    raise PartitionError(
        f"dirichlet partition: no draw in {MAX_DIRICHLET_TRIES} gave each of the {num_clients} "
        f"clients >= {min_size} examples with `partition.alpha` = {alpha}; raise `partition.alpha` "
        "or lower `federation.num_clients`"
    )


def _dirichlet_draw(
    groups: list[np.ndarray], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One Dirichlet draw: deal each key group's shuffled examples by Dir(alpha) proportions."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for group in groups:
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(group)).astype(np.int64)
        for client, share in enumerate(np.split(rng.permutation(group), cuts)):
            parts[client].append(share)
    return [np.concatenate(p).astype(np.int64) for p in parts]


def natural(keys: Sequence[str], num_clients: int) -> list[np.ndarray]:
    """One client per distinct key value, clients in sorted key order.

    Parameters
    ----------
    keys : sequence of str
        The key of each example (``Example.key``).
    num_clients : int
        Must equal the number of distinct key values.

    Returns
    -------
    list of numpy.ndarray
        Client ``i`` holds the examples whose key is the ``i``-th smallest key value.

    Raises
    ------
    PartitionError
        ``num_clients`` differs from the number of distinct key values.
    """
    values = sorted(set(keys))
    if num_clients != len(values):
        shown = ", ".join(repr(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise PartitionError(
            f"natural partition: the data has {len(values)} key values ({shown}), so "
            f"`federation.num_clients` must be {len(values)}, got {num_clients}"
        )
    key_array = np.asarray(keys, dtype=object)
    return [np.flatnonzero(key_array == value).astype(np.int64) for value in values]


Partitioner = Callable[[Sequence[str], int, int, "PartitionConfig"], list[np.ndarray]]
"""``partitioner(keys, num_clients, seed, settings)``: one sorted index array per client."""

PARTITIONERS: dict[str, Partitioner] = {
    "iid": lambda keys, num_clients, seed, cfg: iid(len(keys), num_clients, seed),
    "dirichlet": lambda keys, num_clients, seed, cfg: dirichlet(keys, num_clients, cfg.alpha, seed),
    "natural": lambda keys, num_clients, seed, cfg: natural(keys, num_clients),
}
"""``partition.method`` -> its partitioner (``settings`` is the scenario's ``[partition]``)."""


def train_eval_split(
    indices: np.ndarray | Sequence[int], eval_fraction: float, seed: int, client: int | str = "?"
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's examples into a training and an evaluation share.

    ``round(eval_fraction * n)`` examples go to evaluation, but at least one when
    ``eval_fraction > 0`` and never all of them (training keeps at least one).

    Parameters
    ----------
    indices : numpy.ndarray or sequence of int
        The client's example indices.
    eval_fraction : float
        In ``[0, 1)``, ``data.eval_fraction``.
    seed : int
        Seeds the shuffle.
    client : int or str
        Names the client in errors.

    Returns
    -------
    tuple of numpy.ndarray
        ``(train, eval)``, each sorted; ``eval`` is empty only when ``eval_fraction == 0``.

    Raises
    ------
    PartitionError
        ``eval_fraction`` outside ``[0, 1)``, or too few examples for a non-empty train and eval
        share.
    """
    if not 0 <= eval_fraction < 1:
        raise PartitionError(f"`data.eval_fraction` must be in [0, 1), got {eval_fraction}")
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    num_eval = min(max(round(eval_fraction * n), 1), n - 1) if eval_fraction > 0 else 0
    if n < 1 or (eval_fraction > 0 and num_eval < 1):
        raise PartitionError(
            f"client {client}: {n} example(s) cannot make a train and an eval share with "
            f"`data.eval_fraction` = {eval_fraction}"
        )
    order = np.random.default_rng(seed).permutation(indices)
    return np.sort(order[num_eval:]), np.sort(order[:num_eval])


def _check_sizes(num_examples: int, num_clients: int, min_size: int = 1) -> None:
    if num_clients < 1:
        raise PartitionError(f"`federation.num_clients` must be >= 1, got {num_clients}")
    if num_examples < num_clients * min_size:
        each = f" with >= {min_size} each" if min_size > 1 else ""
        raise PartitionError(
            f"{num_examples} examples are too few for {num_clients} clients{each} "
            "(`federation.num_clients`)"
        )
