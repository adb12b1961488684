"""Ferret's chunked products against the dense sign matrix, bit for bit, at any chunk size."""

import numpy as np
import pytest
import torch

from fedft.ferret import projection
from fedft.ferret.blocks import grid_exponent
from fedft.ferret.projection import combine, project, sign_matrix_numpy
from fedft.zo.seeds import seed_pool


def grid_of(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The fixed-point grid :mod:`fedft.ferret.projection` states: ``sum |q| < 2**53``."""
    peak = float(np.abs(values).max())
    exponent = grid_exponent(peak, 53 - len(values).bit_length())
    return np.rint(values.astype(np.float64) * 2.0**exponent), exponent


@pytest.mark.parametrize("chunk", [32, 96, 1 << 17])
@pytest.mark.parametrize(("start", "count", "num_seeds"), [(0, 1, 2), (5, 27, 3), (77, 4099, 13)])
def test_chunked_products_equal_the_dense_integer_products(
    monkeypatch, chunk, start, count, num_seeds
):
    monkeypatch.setattr(projection, "CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(count)
    seeds = seed_pool(3, 1, num_seeds)
    dense = sign_matrix_numpy(seeds, start, count)
    # a wide dynamic range, so the grid's integers use most of their 53 bits
    delta = (rng.standard_normal(count) * np.logspace(-6, 3, count)).astype(np.float32)
    q, s = grid_of(delta)
    expected = ((dense @ q) * 2.0**-s).astype(np.float32)  # exact: integers below 2**53
    assert np.array_equal(project(delta, seeds, start), expected)
    assert np.array_equal(project(torch.from_numpy(delta), seeds, start), expected)
    c = rng.standard_normal(num_seeds) * np.logspace(-8, 2, num_seeds)
    r, e = grid_of(c)
    u = (r @ dense) * 2.0**-e
    assert np.array_equal(combine(c, seeds, start, count, np.zeros(1)), u)
    assert np.array_equal(combine(c, seeds, start, count, torch.zeros(1)).numpy(), u)
