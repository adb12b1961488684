"""Screening stays O(n log n) in replies and decides exactly as the obvious O(n^2) rule."""

import math

import numpy as np
import pytest

from fedft.algorithms.validation import leave_one_out_medians, norm_outliers


def reference_outliers(norms, factor):
    """The rule as written: each norm against np.median of the other finite norms."""
    norms = np.asarray(norms, dtype=np.float64)
    if norms.size < 3:
        return []
    out = []
    for k, norm in enumerate(norms):
        others = np.delete(norms, k)
        others = others[np.isfinite(others)]
        if not math.isfinite(norm) or (others.size and norm > factor * np.median(others)):
            out.append(k)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_norm_outliers_equal_the_leave_one_out_rule(seed):
    rng = np.random.default_rng(seed)
    for trial in range(400):
        n = int(rng.integers(0, 14))
        if trial % 2:  # ties, infinities and NaNs
            norms = rng.choice([0.0, 1.0, 2.0, 3.0, 5.0, 50.0, np.inf, np.nan], size=n)
        else:  # a spread with some far larger
            norms = rng.exponential(size=n) * rng.choice([1.0, 100.0], size=n, p=[0.8, 0.2])
        for factor in (1.5, 10.0):
            assert norm_outliers(norms, factor) == reference_outliers(norms, factor), norms


def test_leave_one_out_medians_are_numpys_medians_bit_for_bit():
    values = np.random.default_rng(7).normal(size=101) ** 2
    for n in (2, 3, 4, 100, 101):
        got = leave_one_out_medians(values[:n])
        want = [np.median(np.delete(values[:n], k)) for k in range(n)]
        assert got.tolist() == want


def test_norm_outliers_at_ten_thousand_replies_finds_the_planted_ones():
    norms = np.random.default_rng(1).uniform(0.9, 1.1, size=10_000)
    norms[[17, 4242]] = [50.0, np.inf]
    assert norm_outliers(norms, 10.0) == [17, 4242]
