"""Ferret's maths: blocks, seed counts, projection and reconstruction against dense closed forms,
unbiasedness, and the torch and numpy paths agreeing bit for bit."""

import math

import numpy as np
import pytest
import torch

from fedft.factors import factors_digest
from fedft.ferret.aggregate import (
    FerretRound,
    aggregate_coordinates,
    apply_round_,
    client_coordinates,
    client_slots,
    rebuild_,
    replay_history_,
)
from fedft.ferret.blocks import (
    FerretError,
    blocks_of,
    flat_blocks,
    seed_counts,
    seed_window,
    window_offset,
)
from fedft.ferret.projection import combine, project, sign_matrix_numpy
from fedft.zo.rng import rademacher_numpy
from fedft.zo.seeds import seed_pool, seed_pool_id

SEEDS = [0, 1, 12345, 2**63 - 1, 2**64 - 1]
LAYOUT = [("a", (8, 4)), ("b", (3,)), ("c", (16, 4)), ("d", (4, 8)), ("e", (5, 5))]


def random_tensors(layout, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(shape)).astype(np.float32) for _, shape in layout]


def dense_directions(seeds, start, count):
    return np.stack([rademacher_numpy(s, start, count) for s in seeds]).astype(np.float64)


@pytest.mark.parametrize(("start", "count"), [(0, 1), (0, 64), (5, 27), (31, 2), (1000, 4099)])
def test_the_sign_matrix_is_the_generators_signs(start, count):
    expected = dense_directions(SEEDS, start, count)
    assert np.array_equal(sign_matrix_numpy(SEEDS, start, count), expected)


def test_blocks_follow_the_reference_rule_and_cover_the_layout():
    # sizes 32, 3, 64, 32, 25: median 32, target floor(0.9 * 32) = 28
    blocks = blocks_of(LAYOUT)
    assert [(b.first, b.last) for b in blocks] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert [(b.start, b.size) for b in blocks] == [(0, 32), (32, 3), (35, 64), (99, 32), (131, 25)]
    grouped = blocks_of(LAYOUT, block_size=40)  # 3 joins 32; 32 and 25 stay apart (57 > 40)
    assert [(b.first, b.last) for b in grouped] == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert sum(b.size for b in grouped) == 156 and grouped[-1].start + grouped[-1].size == 156
    assert len(blocks_of(LAYOUT, block_size=10**6)) == 1
    with pytest.raises(FerretError, match="no trainable"):
        blocks_of([])


def test_seed_counts_match_the_papers_formula_in_torch_and_numpy():
    rng = np.random.default_rng(3)
    flats = [
        (rng.standard_normal(n) * s).astype(np.float32)
        for n, s in [(50, 1), (80, 0.3), (7, 1e-4), (64, 2)]
    ]
    norms = [float(np.linalg.norm(f.astype(np.float64))) for f in flats]
    expected = [min(200, max(2, math.floor(200 * n / max(norms)))) for n in norms]
    assert seed_counts(flats, 200) == expected
    assert seed_counts([torch.from_numpy(f) for f in flats], 200) == expected
    assert expected[3] == 200 and expected[2] == 2  # the largest block gets K, a tiny one 2
    assert seed_counts([np.zeros(4, np.float32)] * 3, 200) == [2, 2, 2]
    with pytest.raises(FerretError, match="block 1"):
        seed_counts([flats[0], np.array([np.nan], np.float32)], 200)


def test_seed_windows_are_distinct_pool_indices_that_differ_by_client():
    pid = seed_pool_id(7, 3, 200)
    window = seed_window(pid, 3, 1, 4, 150, 200)
    assert len(set(window)) == 150 and all(0 <= s < 200 for s in window)
    assert window == seed_window(pid, 3, 1, 4, 150, 200)
    offsets = {window_offset(pid, 3, c, 4, 200) for c in range(20)}
    assert len(offsets) > 15  # per-client offsets: mostly different directions
    with pytest.raises(FerretError):
        seed_window(pid, 3, 1, 4, 1, 200)


@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e5])
def test_projection_equals_the_dense_product_and_is_bit_identical_in_torch(scale):
    delta = random_tensors([("x", (777,))], seed=1, scale=scale)[0]
    seeds = seed_pool(0, 1, 40)
    dense = dense_directions(seeds, 123, 777) @ delta.astype(np.float64)
    gamma = project(delta, seeds, 123)
    assert gamma.dtype == np.float32
    np.testing.assert_allclose(gamma, dense, rtol=2e-7, atol=1e-6 * scale)
    assert np.array_equal(project(torch.from_numpy(delta), seeds, 123), gamma)


def test_combination_equals_the_dense_product_and_is_bit_identical_in_torch():
    seeds = seed_pool(0, 2, 30)
    c = np.random.default_rng(2).standard_normal(30) * np.logspace(-8, 2, 30)
    like = np.zeros(500, np.float32)
    u = combine(c, seeds, 64, 500, like)
    dense = c @ dense_directions(seeds, 64, 500)
    np.testing.assert_allclose(u, dense, rtol=1e-12, atol=1e-12 * np.abs(c).max())
    assert np.array_equal(combine(c, seeds, 64, 500, torch.from_numpy(like)).numpy(), u)


def one_client(start, end, blocks, round, pool_size, client=0):
    return client_coordinates(
        start, end, blocks, run_seed=5, round=round, client=client, pool_size=pool_size
    )


def rebuilt_update(delta, blocks, round, pool_size, scaling="unbiased", lr=1.0):
    """``start - rebuild(start)`` for a client whose update is ``delta`` (start delta, end 0)."""
    start = [d.copy() for d in delta]
    reply = one_client(start, [np.zeros_like(d) for d in delta], blocks, round, pool_size)
    state = [d.copy() for d in delta]
    rebuild_(
        state,
        blocks,
        reply,
        run_seed=5,
        round=round,
        client=0,
        pool_size=pool_size,
        scaling=scaling,
        server_lr=lr,
    )
    return np.concatenate([(a - b).reshape(-1) for a, b in zip(start, state, strict=True)])


def test_one_rebuild_equals_the_dense_estimator():
    delta = random_tensors(LAYOUT, seed=4)
    blocks = blocks_of(LAYOUT)
    pool_id, pool = seed_pool_id(5, 1, 16), seed_pool(5, 1, 16)
    reply = one_client(delta, [np.zeros_like(d) for d in delta], blocks, 1, 16)
    flats = flat_blocks(delta, blocks)
    expected = []
    for block, flat, count in zip(blocks, flats, reply.counts, strict=True):
        window = seed_window(pool_id, 1, 0, block.index, count, 16)
        v = dense_directions([pool[s] for s in window], block.start, block.size)
        expected.append(0.5 * (v.T @ (v @ flat.astype(np.float64))) / count)
    got = rebuilt_update(delta, blocks, 1, 16, lr=0.5)
    np.testing.assert_allclose(got, np.concatenate(expected), rtol=1e-5, atol=1e-5)


def test_reconstruction_is_unbiased_with_the_stated_variance():
    """Mean of R independent rebuilds -> Delta; mean squared error -> (d - 1) / n ||Delta||^2.

    One block of d = 64, n = K = 8 directions, R = 600 rounds (fresh pools): the mean's error has
    expectation (d - 1) / (n R) ||Delta||^2 (relative 0.11); the tolerances are ~5 standard
    deviations of these statistics (fixed seeds: the test is deterministic).
    """
    layout = [("w", (8, 8))]
    delta = random_tensors(layout, seed=6)
    blocks = blocks_of(layout)
    d, n, rounds = 64, 8, 600
    samples = np.stack([rebuilt_update(delta, blocks, r, n) for r in range(1, rounds + 1)])
    target = delta[0].reshape(-1).astype(np.float64)
    norm2 = float(target @ target)
    mean_error = float(np.sum((samples.mean(0) - target) ** 2))
    assert mean_error < 2.0 * (d - 1) / (n * rounds) * norm2
    mse = float(np.mean(np.sum((samples - target) ** 2, axis=1)))
    assert mse == pytest.approx((d - 1) / n * norm2, rel=0.15)
    shrunk = np.stack([rebuilt_update(delta, blocks, r, n, "projection") for r in range(1, 201)])
    # "projection": E = n / (n + d - 1) Delta (MSE-optimal multiple of the unbiased estimate)
    ratio = float(shrunk.mean(0) @ target) / norm2
    assert ratio == pytest.approx(n / (n + d - 1), rel=0.2)


def test_aggregate_is_the_weighted_sum_of_the_clients_rebuilds():
    blocks = blocks_of(LAYOUT)
    start = random_tensors(LAYOUT, seed=7)
    ends = [random_tensors(LAYOUT, seed=8 + k, scale=0.1) for k in range(3)]
    weights = [10.0, 30.0, 60.0]
    pool_id = seed_pool_id(5, 2, 32)
    slots = []
    for k, end in enumerate(ends):
        reply = one_client(start, end, blocks, 2, 32, client=k)
        slots.append(
            client_slots(
                reply,
                blocks,
                pool_id=pool_id,
                round=2,
                client=k,
                pool_size=32,
                scaling="unbiased",
            )
        )
    aggregate = aggregate_coordinates(slots, weights)
    for slot, value in aggregate.items():
        expected = sum(w / 100 * s.get(slot, 0.0) for w, s in zip(weights, slots, strict=True))
        assert value == float(np.float32(expected))
    state = [t.copy() for t in start]
    apply_round_(state, blocks, FerretRound(2, 32, aggregate), run_seed=5, server_lr=1.0)
    expected_state = []
    for t, tensor in enumerate(start):
        step = 0.0
        for k, w in enumerate(weights):
            single = [x.copy() for x in start]
            reply = one_client(start, ends[k], blocks, 2, 32, client=k)
            rebuild_(
                single,
                blocks,
                reply,
                run_seed=5,
                round=2,
                client=k,
                pool_size=32,
                scaling="unbiased",
                server_lr=1.0,
            )
            step = step + w / 100 * (tensor.astype(np.float64) - single[t])
        expected_state.append(tensor - step)
    for got, want in zip(state, expected_state, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_replayed_history_gives_the_same_bits_in_torch_and_numpy():
    blocks = blocks_of(LAYOUT)
    names = [name for name, _ in LAYOUT]
    base = random_tensors(LAYOUT, seed=9)
    history = []
    server = [torch.from_numpy(t.copy()) for t in base]
    for r in range(1, 4):  # the server's rounds: clients project from the current state
        start = [t.numpy().copy() for t in server]
        end = [t - 0.01 * r for t in start]
        reply = one_client(start, end, blocks, r, 64, client=r)
        slots = client_slots(
            reply,
            blocks,
            pool_id=seed_pool_id(5, r, 64),
            round=r,
            client=r,
            pool_size=64,
            scaling="unbiased",
        )
        entry = FerretRound(r, 64, aggregate_coordinates([slots], [1.0]))
        apply_round_(server, blocks, entry, run_seed=5, server_lr=0.7)
        history.append(entry)
    numpy_client = [t.copy() for t in base]
    replay_history_(numpy_client, blocks, history, run_seed=5, server_lr=0.7)
    torch_client = [torch.from_numpy(t.copy()) for t in base]
    replay_history_(torch_client, blocks, history, run_seed=5, server_lr=0.7)

    def digest(tensors):
        return factors_digest({n: torch.as_tensor(t) for n, t in zip(names, tensors, strict=True)})

    assert digest(numpy_client) == digest(torch_client) == digest(server)
    assert digest(server) != digest(base)


def test_client_coordinates_are_bit_identical_in_torch_and_numpy():
    blocks = blocks_of(LAYOUT)
    start, end = random_tensors(LAYOUT, seed=10), random_tensors(LAYOUT, seed=11)
    a = one_client(start, end, blocks, 4, 100)
    b = one_client(
        [torch.from_numpy(t) for t in start], [torch.from_numpy(t) for t in end], blocks, 4, 100
    )
    assert a.counts == b.counts
    assert all(np.array_equal(x, y) for x, y in zip(a.coords, b.coords, strict=True))


def test_bad_inputs_raise_ferret_errors():
    blocks = blocks_of(LAYOUT)
    start = random_tensors(LAYOUT, seed=12)
    end = [t.copy() for t in start]
    end[2][0, 0] = np.inf
    with pytest.raises(FerretError, match="not finite"):
        one_client(start, end, blocks, 1, 16)
    with pytest.raises(FerretError, match="block 9"):
        apply_round_(start, blocks, FerretRound(1, 16, {9 * 16: 1.0}), run_seed=5, server_lr=1.0)
    with pytest.raises(FerretError, match="not finite"):
        aggregate_coordinates([{0: 1e39}, {0: 1e39}], [1.0, 1.0])
    with pytest.raises(FerretError, match="2\\*\\*32"):
        one_client(start, start, blocks_of([("w", (1,))] * 70_000), 1, 2**16)
