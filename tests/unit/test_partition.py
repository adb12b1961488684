"""Client partitioners (fedft.partition)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedft.partition import PartitionError, dirichlet, iid, natural, train_eval_split

KEYS = [k for k in "abcde" for _ in range(60)]  # 5 key values x 60 examples


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    assert all(p.dtype == np.int64 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == n and sorted(joined.tolist()) == list(range(n))


def _mean_key_entropy(parts: list[np.ndarray], keys: list[str]) -> float:
    """Mean over clients of the entropy (nats) of the client's key distribution."""
    entropies = []
    for part in parts:
        counts = np.array(list(Counter(keys[i] for i in part).values()), dtype=float)
        p = counts / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


def test_iid_splits_evenly_disjoint_and_covering():
    parts = iid(103, 4, seed=0)
    _assert_disjoint_cover(parts, 103)
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    assert all((np.diff(p) > 0).all() for p in parts)


def test_iid_is_seeded():
    same = [a.tolist() for a in iid(50, 3, seed=1)] == [b.tolist() for b in iid(50, 3, seed=1)]
    other = [a.tolist() for a in iid(50, 3, seed=1)] != [b.tolist() for b in iid(50, 3, seed=2)]
    assert same and other


@pytest.mark.parametrize("alpha", [0.05, 0.5, 100.0])
def test_dirichlet_is_disjoint_covering_and_respects_min_size(alpha):
    parts = dirichlet(KEYS, num_clients=5, alpha=alpha, seed=0, min_size=3)
    _assert_disjoint_cover(parts, len(KEYS))
    assert min(len(p) for p in parts) >= 3


def test_dirichlet_is_seeded():
    a = [p.tolist() for p in dirichlet(KEYS, 4, 0.5, seed=7)]
    assert a == [p.tolist() for p in dirichlet(KEYS, 4, 0.5, seed=7)]
    assert a != [p.tolist() for p in dirichlet(KEYS, 4, 0.5, seed=8)]


def test_dirichlet_small_alpha_is_more_skewed_than_large_alpha():
    skewed = np.mean([_mean_key_entropy(dirichlet(KEYS, 5, 0.1, s), KEYS) for s in range(5)])
    mixed = np.mean([_mean_key_entropy(dirichlet(KEYS, 5, 100.0, s), KEYS) for s in range(5)])
    uniform = np.log(5)
    assert mixed > 0.95 * uniform  # large alpha: every client sees every key about equally
    assert skewed < 0.5 * uniform  # small alpha: each client is dominated by a few keys


def test_dirichlet_gives_up_with_an_error_naming_alpha():
    keys = ["a"] * 12  # one key value: a tiny alpha puts nearly everything on one client
    with pytest.raises(PartitionError, match=r"`partition.alpha` = 0.001.*federation.num_clients"):
        dirichlet(keys, num_clients=6, alpha=0.001, seed=0, min_size=2)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"num_clients": 0, "alpha": 1.0}, "num_clients` must be >= 1"),
        ({"num_clients": 301, "alpha": 1.0}, "300 examples are too few for 301 clients"),
        ({"num_clients": 200, "alpha": 1.0, "min_size": 2}, "too few for 200 clients with >= 2"),
        ({"num_clients": 2, "alpha": 0.0}, "`partition.alpha` must be > 0"),
    ],
)
def test_dirichlet_argument_errors(kwargs, expected):
    with pytest.raises(PartitionError, match=expected):
        dirichlet(KEYS, seed=0, **kwargs)


def test_natural_gives_one_key_per_client_in_sorted_order():
    keys = ["rev", "cpy", "rev", "srt", "cpy", "rev"]
    parts = natural(keys, 3)
    _assert_disjoint_cover(parts, len(keys))
    assert [sorted({keys[i] for i in p}) for p in parts] == [["cpy"], ["rev"], ["srt"]]
    assert [p.tolist() for p in parts] == [[1, 4], [0, 2, 5], [3]]


def test_natural_needs_one_client_per_key_value():
    with pytest.raises(
        PartitionError, match=r"has 3 key values \('a', 'b', 'c'\).* must be 3, got 4"
    ):
        natural(["a", "b", "c", "a"], 4)


@pytest.mark.parametrize("splitter", [lambda n, k: iid(n, k, 0), lambda n, k: natural("x" * n, k)])
def test_more_clients_than_examples_is_an_error(splitter):
    with pytest.raises(PartitionError):
        splitter(2, 3)


def test_iid_more_clients_than_examples_names_the_count():
    with pytest.raises(PartitionError, match="2 examples are too few for 3 clients"):
        iid(2, 3, seed=0)


def test_train_eval_split_shares_are_disjoint_and_sized():
    indices = np.arange(100, 120)
    train, evaluation = train_eval_split(indices, 0.25, seed=0)
    assert len(evaluation) == 5 and len(train) == 15
    assert sorted(np.concatenate([train, evaluation]).tolist()) == indices.tolist()
    again = train_eval_split(indices, 0.25, seed=0)
    other = train_eval_split(indices, 0.25, seed=1)
    assert again[1].tolist() == evaluation.tolist() and other[1].tolist() != evaluation.tolist()


def test_train_eval_split_edge_sizes():
    train, evaluation = train_eval_split([3, 4, 5], 0.0, seed=0)
    assert train.tolist() == [3, 4, 5] and evaluation.tolist() == []
    train, evaluation = train_eval_split([3, 4], 0.01, seed=0)  # rounds to 0, but eval was asked
    assert len(train) == 1 and len(evaluation) == 1
    train, evaluation = train_eval_split([3, 4], 0.9, seed=0)  # rounds to 2, train keeps one
    assert len(train) == 1 and len(evaluation) == 1
    train, evaluation = train_eval_split([7], 0.0, seed=0)
    assert train.tolist() == [7] and evaluation.tolist() == []


@pytest.mark.parametrize(
    ("indices", "fraction", "expected"),
    [
        ([7], 0.1, "client 2: 1 example"),
        ([], 0.0, "client 2: 0 example"),
        ([1, 2], 1.0, r"`data.eval_fraction` must be in \[0, 1\)"),
        ([1, 2], -0.1, "eval_fraction"),
    ],
)
def test_train_eval_split_errors(indices, fraction, expected):
    with pytest.raises(PartitionError, match=expected):
        train_eval_split(indices, fraction, seed=0, client=2)


def test_every_partition_method_the_config_accepts_has_a_partitioner():
    import typing

    from fedft.config import PartitionConfig
    from fedft.partition import PARTITIONERS

    names = typing.get_args(typing.get_type_hints(PartitionConfig)["method"])
    assert set(PARTITIONERS) == set(names)


@pytest.mark.parametrize("method", ["iid", "dirichlet", "natural"])
def test_partitioners_equal_the_functions_they_name(method):
    from fedft.config import PartitionConfig
    from fedft.partition import PARTITIONERS

    cfg = PartitionConfig(method=method, alpha=0.3)
    expected = {
        "iid": lambda: iid(len(KEYS), 5, 7),
        "dirichlet": lambda: dirichlet(KEYS, 5, 0.3, 7),
        "natural": lambda: natural(KEYS, 5),
    }[method]()
    got = PARTITIONERS[method](KEYS, 5, 7, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
