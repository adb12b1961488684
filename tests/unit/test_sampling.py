"""Paired sampling: a round's clients are a pure function of (seed, round, partitions available)."""

import logging
import random
from collections import Counter

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from replies import GLOBAL, NUM_CLIENTS, Grid, array_reply, make_strategy, moved

from fedft.flower_records import factors_to_record
from fedft.sampling import priority, sample_partitions, sample_size
from server.partitions import PARTITION_QUERY


def test_a_sample_is_sorted_distinct_of_the_size_asked_and_repeatable():
    for server_round in range(1, 20):
        sample = sample_partitions(3, server_round, range(16), 4)
        assert len(sample) == 4 and list(sample) == sorted(set(sample))
        assert set(sample) <= set(range(16))
        assert sample == sample_partitions(3, server_round, reversed(range(16)), 4)
    assert sample_partitions(0, 1, [5, 2], 4) == (2, 5)  # fewer available than asked: all


def test_the_sample_changes_with_the_seed_and_the_round():
    by_round = {sample_partitions(0, r, range(16), 4) for r in range(1, 11)}
    by_seed = {sample_partitions(s, 1, range(16), 4) for s in range(10)}
    assert len(by_round) > 5 and len(by_seed) > 5


def test_every_partition_is_sampled_about_equally_often():
    counts = Counter(p for r in range(1, 2001) for p in sample_partitions(7, r, range(10), 3))
    # 2000 rounds x 3 of 10: 600 each in expectation, binomial sd ~20.5; 5 sd either side
    assert set(counts) == set(range(10))
    assert all(500 < c < 700 for c in counts.values()), counts


def test_a_missing_partition_changes_no_other_choice():
    everyone = sample_partitions(1, 4, range(12), 5)
    missing = everyone[0]
    without = sample_partitions(1, 4, [p for p in range(12) if p != missing], 5)
    assert set(everyone) - {missing} <= set(without) and missing not in without
    absent = next(p for p in range(12) if p not in everyone)
    assert sample_partitions(1, 4, [p for p in range(12) if p != absent], 5) == everyone


def test_priorities_are_fixed_numbers_not_process_state():
    # blake2b-64 of "0:1:3" and "2:7:11" (RFC 7693) over 2**64: the same on every machine
    assert priority(0, 1, 3) == 0.0170398111091828
    assert priority(2, 7, 11) == 0.6182335929543074


@pytest.mark.parametrize(
    ("n", "fraction", "minimum", "size"), [(16, 0.25, 1, 4), (10, 0.15, 3, 3), (3, 0.5, 5, 3)]
)
def test_sample_size_is_flowers_rule(n, fraction, minimum, size):
    assert sample_size(n, fraction, minimum) == size


def answer(query, partition):
    """A ClientApp's reply to a ``query.partition`` message."""
    content = RecordDict({"metrics": MetricRecord({"partition-id": partition})})
    return Message(content, reply_to=query)


def learn_partitions(strategy, grid, partition_of):
    queries = strategy.configure_query(1, grid)
    assert all(q.metadata.message_type == PARTITION_QUERY for q in queries)
    replies = [answer(q, partition_of[q.metadata.dst_node_id]) for q in queries]
    strategy.aggregate_query(1, replies)
    return queries


def trained_partitions(strategy, grid, partition_of, server_round):
    arrays = factors_to_record(GLOBAL)
    sent = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
    return sorted(partition_of[m.metadata.dst_node_id] for m in sent)


@pytest.mark.parametrize("kind", ["fedit", "lora_fair", "zo"])
def test_strategies_train_the_predicted_partitions_whatever_the_node_ids(kind):
    rng = random.Random(kind)  # each "run" draws other node ids, as Flower does
    nodes = rng.sample(range(1, 2**40), NUM_CLIENTS)
    partition_of = dict(zip(nodes, rng.sample(range(NUM_CLIENTS), NUM_CLIENTS), strict=True))
    strategy = make_strategy(kind)
    strategy.fraction_train = 0.5
    grid = Grid(nodes)
    assert len(learn_partitions(strategy, grid, partition_of)) == NUM_CLIENTS
    assert learn_partitions(strategy, grid, partition_of) == []  # asked once per node
    for server_round in range(1, 6):
        expected = list(sample_partitions(5, server_round, range(NUM_CLIENTS), 4))
        assert trained_partitions(strategy, grid, partition_of, server_round) == expected
        assert list(strategy.sampler.sampled) == expected


def test_the_sampled_partitions_are_in_the_rounds_metric_record():
    nodes = [11, 12, 13, 14]
    partition_of = {11: 3, 12: 0, 13: 2, 14: 1}
    strategy = make_strategy("fedit")
    strategy.fraction_train = 0.5
    learn_partitions(strategy, Grid(nodes), partition_of)
    sampled = trained_partitions(strategy, Grid(nodes), partition_of, 1)
    node_of = {p: n for n, p in partition_of.items()}
    replies = [array_reply(node_of[p], moved(p), partition=float(p)) for p in sampled]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["sampled_partitions"] == sampled == list(sample_partitions(5, 1, range(4), 2))


def test_bad_partition_answers_are_ignored_and_named(caplog):
    strategy = make_strategy("fedit")
    strategy.fraction_train = 0.5
    grid = Grid([21, 22, 23, 24, 25])
    queries = {q.metadata.dst_node_id: q for q in strategy.configure_query(1, grid)}
    replies = [
        answer(queries[21], 0),
        answer(queries[22], NUM_CLIENTS),  # out of range
        answer(queries[23], -1),
        answer(queries[24], 0),  # the same partition as node 21
        Message(RecordDict({"metrics": MetricRecord({"x": 1.0})}), reply_to=queries[25]),
    ]
    with caplog.at_level(logging.WARNING, logger="fedft.server"):
        strategy.aggregate_query(1, replies)
        assert strategy.sampler.holders(grid.get_node_ids()) == {0: 21}
    for node in (22, 23, 24, 25):
        assert f"node {node}" in caplog.text
    assert len(strategy.configure_query(2, grid)) == 3  # 22, 23, 25 are asked again


def test_fraction_one_trains_every_node_without_asking():
    strategy = make_strategy("fedit")
    grid = Grid([5, 3, 9])
    assert strategy.configure_query(1, grid) == []
    sent = strategy.configure_train(1, factors_to_record(GLOBAL), ConfigRecord(), grid)
    assert (
        sorted(m.metadata.dst_node_id for m in sent) == [3, 5, 9] and strategy.sampler.sampled == ()
    )
    arrays, metrics = strategy.aggregate_train(1, [array_reply(3, moved(1))])
    assert arrays is not None and "sampled_partitions" not in metrics
