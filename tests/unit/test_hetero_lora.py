"""Heterogeneous-rank aggregation (FLoRA, FlexLoRA, zero-padding, FFA-LoRA, LoRA-FAIR) against
dense closed forms that build dW = sum_k p_k B_k A_k explicitly."""

import pytest
import torch

from fedft.algorithms.ffa_lora import check_frozen_a, ffa_aggregate
from fedft.algorithms.hetero_lora import (
    RankError,
    flexlora_aggregate,
    flora_stack,
    lowrank_svd,
    pad_module,
    pad_state,
    state_rank,
    truncate_state,
)
from fedft.algorithms.lora_fair import LoraFairConfig
from fedft.algorithms.lora_fair_state import lora_fair_aggregate, lora_fair_hetero_aggregate
from fedft.errors import ReplyError

F64 = torch.float64
D, K = 12, 10


def clients(ranks, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = [torch.randn(r, K, generator=gen, dtype=F64) for r in ranks]
    b = [torch.randn(D, r, generator=gen, dtype=F64) for r in ranks]
    return a, b


def dense(a_list, b_list, p):
    return sum(p_k * b @ a for p_k, a, b in zip(p, a_list, b_list, strict=True))


def state(a, b, extra=None):
    out = {"m.lora_A.weight": a.float(), "m.lora_B.weight": b.float()}
    return out | (extra or {})


def test_flora_stack_is_exactly_the_weighted_sum_of_products():
    a, b = clients([2, 4, 3])
    p = [0.2, 0.5, 0.3]
    b_stack, a_stack = flora_stack(a, b, p)
    assert b_stack.shape == (D, 9) and a_stack.shape == (9, K)
    torch.testing.assert_close(b_stack @ a_stack, dense(a, b, p), rtol=1e-12, atol=1e-12)


def test_flora_stack_refuses_factors_that_do_not_pair():
    a, b = clients([2, 3])
    with pytest.raises(RankError, match="client 1"):
        flora_stack(a, [b[0], b[0]], [0.5, 0.5])


def test_lowrank_svd_matches_the_dense_svd_of_the_update():
    a, b = clients([2, 4, 3])
    p = [0.2, 0.5, 0.3]
    svd = lowrank_svd(a, b, p)
    expected = torch.linalg.svdvals(dense(a, b, p))
    assert svd.s.numel() == 9  # rank of the sum <= sum of ranks (here exactly, generic factors)
    torch.testing.assert_close(svd.s, expected[:9], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(svd.u.T @ svd.u, torch.eye(9, dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(svd.v.T @ svd.v, torch.eye(9, dtype=F64), atol=1e-10, rtol=0)
    full = svd.u @ torch.diag(svd.s) @ svd.v.T
    torch.testing.assert_close(full, dense(a, b, p), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rank", [1, 3, 6, 8])  # 8 > the sum of ranks: zero-padded
def test_flexlora_factors_are_the_eckart_young_truncation(rank):
    a, b = clients([2, 4])
    p = [0.4, 0.6]
    w = dense(a, b, p)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    best = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]  # dense rank-r truncated SVD
    a_r, b_r = lowrank_svd(a, b, p).factors(rank)
    assert a_r.shape == (rank, K) and b_r.shape == (D, rank)
    torch.testing.assert_close(b_r @ a_r, best, rtol=1e-9, atol=1e-9)
    # balanced split: ||A_i|| = ||B_i|| per component
    torch.testing.assert_close(a_r.norm(dim=1), b_r.norm(dim=0), rtol=1e-9, atol=1e-12)


def test_flexlora_client_truncation_is_its_own_rank_svd():
    a, b = clients([2, 4])
    p = [0.5, 0.5]
    w = dense(a, b, p)
    u, s, vh = torch.linalg.svd(w)
    global_state, energy = flexlora_aggregate([state(a[0], b[0]), state(a[1], b[1])], p, rank=6)
    assert energy == pytest.approx(1.0)  # rank 6 = the sum's rank: nothing lost
    small = truncate_state(global_state, 2)  # what a rank-2 client receives
    got = small["m.lora_B.weight"].double() @ small["m.lora_A.weight"].double()
    torch.testing.assert_close(got, u[:, :2] @ torch.diag(s[:2]) @ vh[:2], rtol=1e-5, atol=1e-5)
    _, kept = flexlora_aggregate([state(a[0], b[0]), state(a[1], b[1])], p, rank=2)
    assert kept == pytest.approx(float((s[:2] ** 2).sum() / (s**2).sum()), rel=1e-6)


def test_flexlora_averages_tensors_that_are_not_factors():
    a, b = clients([2, 2])
    bias = [torch.ones(3), 3 * torch.ones(3)]
    states = [state(a[i], b[i], {"m.bias": bias[i]}) for i in range(2)]
    out, _ = flexlora_aggregate(states, [0.25, 0.75], rank=2)
    torch.testing.assert_close(out["m.bias"], 2.5 * torch.ones(3))
    assert list(out) == list(states[0])


def test_zero_padding_keeps_products_and_fedit_of_padded_is_hetlora():
    a, b = clients([2, 4])
    a_pad, b_pad = pad_module(a[0], b[0], 4)
    torch.testing.assert_close(b_pad @ a_pad, b[0] @ a[0], rtol=0, atol=0)
    assert torch.all(a_pad[2:] == 0) and torch.all(b_pad[:, 2:] == 0)
    padded = [pad_state(state(a[i], b[i]), 4) for i in range(2)]
    assert state_rank(padded[0]) == 4
    with pytest.raises(RankError, match="`m`"):
        pad_state(state(a[1], b[1]), 3)


def test_lora_fair_hetero_targets_the_exact_update_and_improves_the_cosine():
    a, b = clients([2, 4, 3], seed=3)
    weights = [10, 30, 20]
    states = [state(a[i], b[i] * 1e-2) for i in range(3)]
    out, report = lora_fair_hetero_aggregate(states, weights, rank=4)
    assert out["m.lora_A.weight"].shape == (4, K) and out["m.lora_B.weight"].shape == (D, 4)
    p = [w / 60 for w in weights]
    ideal = dense(a, [x * 1e-2 for x in b], p)
    got = out["m.lora_B.weight"].double() @ out["m.lora_A.weight"].double()
    cos = float((ideal * got).sum() / (ideal.norm() * got.norm()))
    assert cos == pytest.approx(report.cos_after, abs=1e-6)
    assert report.cos_after > report.cos_before
    # the uncorrected start is HetLoRA's zero-padded average: its cosine is cos_before
    a_bar = sum(p_k * pad_module(x, y, 4)[0] for p_k, x, y in zip(p, a, b, strict=True))
    b_bar = sum(p_k * pad_module(x, y * 1e-2, 4)[1] for p_k, x, y in zip(p, a, b, strict=True))
    plain = b_bar @ a_bar
    cos0 = float((ideal * plain).sum() / (ideal.norm() * plain.norm()))
    assert cos0 == pytest.approx(report.cos_before, abs=1e-6)


def dense_fair_solve(ideal, a_bar, b_bar, lam=0.01, steps=200, lr=0.01):
    """Gradient descent on all of dB (d x R) of 1 - cos(ideal, (b_bar + dB) a_bar) + lam ||dB||,
    the d x k matrices formed densely; keeps the best iterate, as the library does."""
    delta = torch.zeros_like(b_bar, requires_grad=True)
    best = (None, float("inf"))
    for step in range(steps + 1):
        update = (b_bar + delta) @ a_bar
        cos = (ideal * update).sum() / (ideal.norm() * update.norm())
        (grad,) = torch.autograd.grad(1 - cos, delta)
        cos, norm = cos.detach(), float(delta.detach().norm())
        if norm > 0:
            grad = grad + lam * delta.detach() / norm
        else:  # the minimum-norm subgradient of lam ||dB|| at dB = 0
            grad = grad * max(0.0, 1 - lam / float(grad.norm()))
        objective = 1 - float(cos) + lam * norm
        if objective < best[1]:
            best = (delta.detach().clone(), objective)
        if step < steps:
            with torch.no_grad():
                delta -= lr * grad
    return best[0]


def test_lora_fair_hetero_equals_the_dense_solve_against_the_unpadded_update():
    # ranks 2, 4, 3 under a server rank of 5: the target is built from the clients' own factors,
    # the start is HetLoRA's zero-padded average, and dB ranges over all of d x R
    a, b = clients([2, 4, 3], seed=5)
    b = [x * 1e-2 for x in b]
    weights = [10, 30, 20]
    p = [w / 60 for w in weights]
    ideal = dense(a, b, p)
    a_bar = sum(p_k * pad_module(x, y, 5)[0] for p_k, x, y in zip(p, a, b, strict=True))
    b_bar = sum(p_k * pad_module(x, y, 5)[1] for p_k, x, y in zip(p, a, b, strict=True))
    delta = dense_fair_solve(ideal, a_bar, b_bar)
    config = LoraFairConfig(steps=200, tol=0.0)
    out, report = lora_fair_hetero_aggregate(
        [state(a[i], b[i]) for i in range(3)], weights, rank=5, config=config
    )
    torch.testing.assert_close(out["m.lora_A.weight"].double(), a_bar, rtol=1e-6, atol=1e-7)
    want = b_bar + delta
    got = out["m.lora_B.weight"].double()
    assert float((got - want).norm() / want.norm()) <= 1e-5
    # a real correction: without it (dB = 0) the output would miss by far more than 1e-5
    assert float(delta.norm()) > 1e-2 * float(want.norm())
    assert report.cos_after > report.cos_before + 1e-4


def test_lora_fair_hetero_with_one_rank_is_lora_fair():
    a, b = clients([3, 3], seed=4)
    states = [state(a[i], b[i] * 1e-2) for i in range(2)]
    plain, _ = lora_fair_aggregate(states, [1, 2])
    hetero, _ = lora_fair_hetero_aggregate(states, [1, 2], rank=3)
    for key in plain:
        assert torch.equal(plain[key], hetero[key])


def test_ffa_lora_keeps_a_and_is_exact():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(4, K, generator=gen)
    start = {"m.lora_A.weight": a, "m.lora_B.weight": torch.zeros(D, 4)}
    b_small = torch.randn(D, 2, generator=gen)  # a rank-2 client trains A[:2] only
    b_big = torch.randn(D, 4, generator=gen)
    replies = [
        pad_state({"m.lora_A.weight": a[:2].clone(), "m.lora_B.weight": b_small}, 4),
        {"m.lora_A.weight": a.clone(), "m.lora_B.weight": b_big},
    ]
    replies[0]["m.lora_A.weight"] = a.clone()  # padded A rows are the server's frozen A
    out = ffa_aggregate(replies, [1, 3], start)
    assert torch.equal(out["m.lora_A.weight"], a)
    ideal = 0.25 * b_small.double() @ a[:2].double() + 0.75 * b_big.double() @ a.double()
    got = out["m.lora_B.weight"].double() @ a.double()
    torch.testing.assert_close(got, ideal, rtol=1e-6, atol=1e-6)


def test_ffa_lora_refuses_a_reply_that_moved_a():
    a = torch.randn(2, K)
    start = {"m.lora_A.weight": a, "m.lora_B.weight": torch.zeros(D, 2)}
    moved = {"m.lora_A.weight": a + 1e-6, "m.lora_B.weight": torch.zeros(D, 2)}
    with pytest.raises(ReplyError, match="frozen"):
        check_frozen_a(moved, start)
    check_frozen_a({k: v.clone() for k, v in start.items()}, start)


def test_flora_accumulate_adds_every_rounds_stack_exactly_and_stays_small():
    from fedft.algorithms.hetero_lora import flora_accumulate

    merged: dict = {}
    total = torch.zeros(D, K, dtype=F64)
    for round_seed in range(4):  # 4 rounds of ranks 2 + 4 = 6 each: 24 > min(D, K) = 10
        a, b = clients([2, 4], seed=10 + round_seed)
        p = [0.3, 0.7]
        merged = flora_accumulate(merged, [state(a[i], b[i]) for i in range(2)], p)
        total += dense([x.float().double() for x in a], [x.float().double() for x in b], p)
        got = merged["m.lora_B.weight"] @ merged["m.lora_A.weight"]
        torch.testing.assert_close(got, total, rtol=1e-9, atol=1e-9)
    assert merged["m.lora_A.weight"].shape[0] <= min(D, K)
    assert merged["m.lora_A.weight"].dtype == F64
