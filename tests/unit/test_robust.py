"""Robust aggregation: closed forms, Flower's own implementations as references, the strategies."""

import logging

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import (
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)
from replies import GLOBAL, array_reply, make_strategy, moved, run_round

from fedft.algorithms.fedavg import weighted_average
from fedft.algorithms.robust import coordinate_median, krum_scores, krum_select, trimmed_mean
from fedft.config import load_scenario
from fedft.errors import ConfigError


def states(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g)} for _ in range(n)
    ]


def as_flower(sts):
    return [([s["a"].numpy(), s["b"].numpy()], 10) for s in sts]


def test_median_closed_form_odd_and_even():
    values = [[5.0, -1.0], [1.0, 2.0], [3.0, 10.0], [100.0, 0.0]]
    sts = [{"w": torch.tensor(v)} for v in values]
    assert torch.equal(coordinate_median(sts[:3])["w"], torch.tensor([3.0, 2.0]))
    assert torch.equal(coordinate_median(sts)["w"], torch.tensor([4.0, 1.0]))  # (3+5)/2, (0+2)/2


def test_trimmed_mean_closed_form():
    sts = [{"w": torch.tensor([v])} for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    assert torch.equal(trimmed_mean(sts, 0.2)["w"], torch.tensor([3.0]))  # cut 1 each end: 2,3,4
    assert torch.equal(trimmed_mean(sts, 0.0)["w"], torch.tensor([202.0]))  # the plain mean
    with pytest.raises(ValueError, match="fraction"):
        trimmed_mean(sts, 0.5)


@pytest.mark.parametrize("n", [3, 4, 7])
def test_median_and_trimmed_mean_match_flowers(n):
    sts = states(n)
    ours = coordinate_median(sts)
    for ref, name in zip(aggregate_median(as_flower(sts)), "ab", strict=True):
        np.testing.assert_allclose(ours[name].numpy(), ref, rtol=1e-6, atol=1e-7)
    ours = trimmed_mean(sts, 0.25)
    for ref, name in zip(aggregate_trimmed_avg(as_flower(sts), 0.25), "ab", strict=True):
        np.testing.assert_allclose(ours[name].numpy(), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("n", "f"), [(5, 1), (7, 2), (4, 0)])
def test_krum_selects_what_flowers_krum_selects(n, f):
    sts = states(n, seed=n)
    sts[0] = {k: v + 50.0 for k, v in sts[0].items()}  # one far away
    (best,) = krum_select(sts, f, keep=1)
    ref = aggregate_krum(as_flower(sts), num_malicious=f, to_keep=0)
    assert np.array_equal(sts[best]["a"].numpy(), ref[0]) and best != 0
    kept = krum_select(sts, f, keep=n - f)
    ref = aggregate_krum(as_flower(sts), num_malicious=f, to_keep=n - f)  # their average
    mean = weighted_average([sts[k] for k in kept], [1.0] * len(kept))
    np.testing.assert_allclose(mean["a"].numpy(), ref[0], rtol=1e-5, atol=1e-6)


def test_krum_scores_closed_form():
    sts = [{"w": torch.tensor([v])} for v in (0.0, 1.0, 3.0)]
    # n - f - 2 = 1 nearest other: 0 -> 1 (1), 1 -> 0 (1), 3 -> 1 (4)
    assert krum_scores(sts, byzantine=0) == [1.0, 1.0, 4.0]


def biased(seed):
    """Within every per-reply limit, but 3 standard deviations off: what only robust rules stop."""
    return moved(seed, size=0.1, state={k: v + 0.3 for k, v in GLOBAL.items()})


def test_the_median_strategy_ignores_a_biased_minority():
    replies = [array_reply(n, moved(n)) for n in (1, 2, 3)] + [array_reply(9, biased(9))]
    out = run_round(make_strategy("fedit", aggregator="median"), replies)
    expected = coordinate_median([moved(1), moved(2), moved(3), biased(9)])
    assert all(torch.equal(out[k], expected[k]) for k in expected)
    mean = run_round(make_strategy("fedit"), replies)
    name = next(iter(GLOBAL))
    shift = lambda s: float((s[name] - GLOBAL[name]).mean())  # noqa: E731
    assert abs(shift(out)) < abs(shift(mean))


def test_the_trimmed_mean_strategy_is_the_closed_form():
    replies = [array_reply(n, moved(n)) for n in (1, 2, 3, 4)] + [array_reply(9, biased(9))]
    out = run_round(make_strategy("fedit", aggregator="trimmed_mean", trim_fraction=0.2), replies)
    expected = trimmed_mean([moved(n) for n in (1, 2, 3, 4)] + [biased(9)], 0.2)
    assert all(torch.equal(out[k], expected[k]) for k in expected)


@pytest.mark.parametrize("kind", ["fedit", "lora_fair"])
def test_krum_strategies_leave_out_the_far_reply(kind, caplog):
    replies = [array_reply(n, moved(n), examples=10.0 * n) for n in (1, 2, 3, 4)]
    far = array_reply(9, biased(9))
    with caplog.at_level(logging.INFO, logger="fedft.server"):
        out = run_round(make_strategy(kind, aggregator="multi_krum", byzantine=1), [*replies, far])
    assert "multi_krum left out nodes [9]" in caplog.text
    assert all(
        torch.equal(a, b)
        for a, b in zip(out.values(), run_round(make_strategy(kind), replies).values(), strict=True)
    )
    one = run_round(make_strategy(kind, aggregator="krum", byzantine=1), [*replies, far])
    if kind == "fedit":  # Krum keeps one reply: its factors are the new state
        assert any(all(torch.equal(one[k], moved(n)[k]) for k in one) for n in (1, 2, 3, 4))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["robust.aggregator='median'", "federation.strategy='lora_fair'"], "fedit, ffa_lora only"),
        (["robust.aggregator='krum'", "federation.strategy='zo'"], "only 'mean'"),
        (["robust.aggregator='mode'"], "robust.aggregator"),
        (["robust.trim_fraction=0.5"], "robust.trim_fraction"),
        (["robust.max_num_examples=0"], "robust.max_num_examples"),
    ],
)
def test_robust_settings_are_validated(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_scenario(None, overrides)
