"""Zeroth-order maths: seed pools, SPSA step, quantization, aggregation, replay, exact rebuild."""

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fedft.wire.int8 import dequantize_grads, quantize_grads
from fedft.wire.zo_reply import encode_zo_reply
from fedft.zo.replay import (
    aggregate_records,
    history_bytes,
    prefer_replay,
    replay_,
    replay_records_,
)
from fedft.zo.rng import layout_of, perturbation_numpy
from fedft.zo.seeds import (
    ZoError,
    ZoRecord,
    derived_seed_indices,
    index_width,
    seed_pool,
    seed_pool_id,
)
from fedft.zo.step import spsa_step_, spsa_step_numpy_

REPO = Path(__file__).parents[2]
VECTORS = json.loads((REPO / "tests" / "data" / "rng_vectors.json").read_text())
F32 = np.float32


# ---- seed pools ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["seed_pools"], ids=lambda c: c["pool_id"])
def test_seed_pool_vectors(case):
    run_seed = int(case["run_seed"], 16)
    assert seed_pool_id(run_seed, case["round"], case["size"]) == int(case["pool_id"], 16)
    expected = [int(s, 16) for s in case["seeds"]]
    assert seed_pool(run_seed, case["round"], case["size"]) == expected


def test_seed_pool_is_a_pure_function_of_run_round_size():
    pool = seed_pool(7, 3, 1024)
    assert pool == seed_pool(7, 3, 1024)
    assert len(set(pool)) == 1024 and all(0 <= s < 2**63 for s in pool)
    assert set(pool).isdisjoint(seed_pool(7, 4, 1024))
    assert set(pool).isdisjoint(seed_pool(8, 3, 1024))
    with pytest.raises(ZoError, match="run_seed"):
        seed_pool(-1, 0, 4)
    with pytest.raises(ZoError, match="pool_size"):
        seed_pool(0, 0, 0)


@pytest.mark.parametrize("case", VECTORS["derived_seed_indices"], ids=lambda c: c["pool_id"])
def test_derived_seed_index_vectors(case):
    args = int(case["pool_id"], 16), case["round"], int(case["client"], 16)
    got = derived_seed_indices(*args, len(case["indices"]), case["pool_size"])
    assert got == case["indices"]


def test_derived_seed_indices_are_uniform_and_client_specific():
    pid = seed_pool_id(1, 0, 16)
    draws = np.array(derived_seed_indices(pid, 2, 99, 16_000, 16))
    counts = np.bincount(draws, minlength=16)
    assert np.abs(counts - 1000).max() < 5 * (1000 * 15 / 16) ** 0.5  # binomial, 5 sd
    assert derived_seed_indices(pid, 2, 98, 50, 16) != derived_seed_indices(pid, 2, 99, 50, 16)
    assert derived_seed_indices(pid, 3, 99, 50, 16) != derived_seed_indices(pid, 2, 99, 50, 16)


# ---- SPSA step -------------------------------------------------------------------------------

A = [np.linspace(0.5, 2.0, 6).reshape(2, 3), np.array([3.0, 0.25, 1.0, 4.0])]
C = [np.arange(6.0).reshape(2, 3) / 7, np.array([-1.0, 0.5, 0.0, 2.0])]


def quadratic(arrays):
    """L(w) = 1/2 sum a (w - c)^2 in float64, on torch tensors or numpy arrays alike."""
    return sum(
        0.5 * float(np.sum(a * (np.asarray(w, np.float64) - c) ** 2))
        for w, a, c in zip(arrays, A, C, strict=True)
    )


def quadratic_params(dtype):
    return [
        torch.tensor([[0.3, -0.2, 0.9], [1.1, 0.0, -0.7]], dtype=dtype),
        torch.tensor([0.2, 0.4, -0.6, 1.5], dtype=dtype),
    ]


def test_spsa_step_equals_the_directional_derivative_and_a_step_along_z():
    params = quadratic_params(torch.float64)
    w0 = [p.numpy().copy() for p in params]
    z = list(perturbation_numpy(11, layout_of(enumerate(params))).values())
    eps, lr = 2.0**-10, 0.0625
    g = spsa_step_(params, lambda: quadratic([p.numpy() for p in params]), 11, eps, lr)
    # slow reference: the central difference, which is exact for a quadratic: grad(L) . z
    plus = quadratic([w + eps * zi for w, zi in zip(w0, z, strict=True)])
    minus = quadratic([w - eps * zi for w, zi in zip(w0, z, strict=True)])
    directional = sum(
        float(np.sum(a * (w - c) * zi)) for w, a, c, zi in zip(w0, A, C, z, strict=True)
    )
    assert g == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)
    assert g == pytest.approx(directional, rel=1e-6)
    for p, w, zi in zip(params, w0, z, strict=True):
        np.testing.assert_allclose(p.numpy(), w - lr * g * zi, rtol=0, atol=1e-12)


def test_spsa_step_is_bit_identical_to_an_op_by_op_float32_reference():
    params = quadratic_params(torch.float32)
    w = [p.numpy().copy() for p in params]
    z = [zi.astype(F32) for zi in perturbation_numpy(5, layout_of(enumerate(params))).values()]
    eps, lr = 1e-3, 0.05
    g = spsa_step_(params, lambda: quadratic([p.numpy() for p in params]), 5, eps, lr)
    e = F32(eps)
    w = [wi + e * zi for wi, zi in zip(w, z, strict=True)]
    plus = quadratic(w)
    w = [wi + F32(-2 * e) * zi for wi, zi in zip(w, z, strict=True)]
    minus = quadratic(w)
    g_ref = F32((plus - minus) / (2 * float(e)))
    w = [wi + (e - F32(lr) * g_ref) * zi for wi, zi in zip(w, z, strict=True)]
    assert g == float(g_ref)
    for p, wi in zip(params, w, strict=True):
        assert p.numpy().tobytes() == wi.tobytes()


def test_numpy_spsa_step_is_bit_identical_to_the_torch_step():
    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=(8, 5)).astype(np.float32), rng.normal(size=(7,)).astype(np.float32)]
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    weights = [rng.normal(size=a.shape) for a in arrays]

    def loss_of(values):  # the same float64 sum on both sides: equal losses, equal bits after
        pairs = zip(values, weights, strict=True)
        return float(sum((np.asarray(v, np.float64) * w).sum() for v, w in pairs))

    for step, seed in enumerate([11, 2**63 + 5, 7]):
        g_numpy = spsa_step_numpy_(arrays, lambda: loss_of(arrays), seed, 1e-3, 1e-2)
        g_torch = spsa_step_(
            tensors, lambda: loss_of([t.numpy() for t in tensors]), seed, 1e-3, 1e-2
        )
        assert g_numpy == g_torch, step
        scale = 100 / 127
        g_numpy = spsa_step_numpy_(
            arrays, lambda: loss_of(arrays), seed, 1e-3, 1e-2, grad_scale=scale
        )
        g_torch = spsa_step_(
            tensors,
            lambda: loss_of([t.numpy() for t in tensors]),
            seed,
            1e-3,
            1e-2,
            grad_scale=scale,
        )
        assert g_numpy == g_torch
    for a, t in zip(arrays, tensors, strict=True):
        assert a.tobytes() == t.numpy().tobytes()


def test_spsa_step_with_grad_scale_applies_the_quantized_g():
    params = quadratic_params(torch.float32)
    scale = float(F32(0.01))
    g = spsa_step_(
        params, lambda: quadratic([p.numpy() for p in params]), 5, 1e-3, 0.05, grad_scale=scale
    )
    codes, _ = quantize_grads([g], scale)
    assert g == dequantize_grads(codes, scale)[0] and abs(int(codes[0])) <= 127


def test_spsa_step_rejects_a_non_finite_loss_and_restores_the_weights():
    params = quadratic_params(torch.float32)
    before = [p.clone() for p in params]
    losses = iter([1.0, float("nan")])
    with pytest.raises(ZoError, match="seed 4"):
        spsa_step_(params, lambda: next(losses), 4, 1e-3, 0.1)
    for p, b in zip(params, before, strict=True):
        assert (p - b).abs().max().item() <= 1e-6  # restored up to float32 rounding
    with pytest.raises(ZoError, match="eps"):
        spsa_step_(params, lambda: 0.0, 4, 0.0, 0.1)


# ---- quantization ----------------------------------------------------------------------------


def test_quantization_round_trip_error_is_at_most_half_a_step():
    grads = np.random.default_rng(0).normal(0, 3, 500).astype(F32).tolist()
    codes, scale = quantize_grads(grads)
    assert codes.dtype == np.int8 and np.abs(codes).max() == 127 and scale == float(F32(scale))
    assert scale == pytest.approx(max(abs(g) for g in grads) / 127, rel=1e-6)
    back = np.array(dequantize_grads(codes, scale))
    assert np.abs(back - grads).max() <= scale / 2 * (1 + 1e-5)


def test_quantization_of_zeros_and_fixed_scales():
    codes, scale = quantize_grads([0.0, 0.0, -0.0])
    assert scale == 0.0 and codes.tolist() == [0, 0, 0]
    assert dequantize_grads(codes, scale) == [0.0, 0.0, 0.0]
    codes, scale = quantize_grads([0.05, -1.0, 0.5], scale=0.01)
    assert codes.tolist() == [5, -100, 50] and scale == float(F32(0.01))
    codes, _ = quantize_grads([10.0, -10.0], scale=0.01)  # clipped at +-127 steps
    assert codes.tolist() == [127, -127]
    again, _ = quantize_grads(dequantize_grads(codes, 0.01), scale=0.01)
    assert again.tolist() == codes.tolist()
    with pytest.raises(ZoError, match="grad 1"):
        quantize_grads([0.0, float("inf")])
    with pytest.raises(ZoError, match="grad_scale"):
        quantize_grads([1.0], scale=0.0)


# ---- aggregation and replay ------------------------------------------------------------------


def test_aggregate_records_against_a_hand_computation():
    replies = [
        [ZoRecord(0, 1.0), ZoRecord(2, -2.0), ZoRecord(0, 0.5)],
        [ZoRecord(2, 4.0), ZoRecord(1, 3.0)],
    ]
    # p = (1/4, 3/4): a_0 = 1/4 (1 + 0.5), a_1 = 3/4 * 3, a_2 = 1/4 (-2) + 3/4 * 4
    assert aggregate_records(replies, [10, 30]) == {0: 0.375, 1: 2.25, 2: 2.5}
    assert aggregate_records([[ZoRecord(5, 1.0)], [ZoRecord(5, -1.0)]], [1, 1]) == {}
    with pytest.raises(ZoError, match="2 replies but 1 weights"):
        aggregate_records(replies, [1])
    with pytest.raises(ZoError, match="reply 1, record 0"):
        aggregate_records([[], [ZoRecord(0, float("nan"))]], [1, 1])


def test_replay_applies_the_aggregate_in_sorted_seed_order_bit_for_bit():
    pool = seed_pool(0, 0, 8)
    params = quadratic_params(torch.float32)
    expected = [p.numpy().copy() for p in params]
    aggregate = {5: -0.25, 1: 0.5, 3: 2.0}
    layout = layout_of(enumerate(params))
    for s in sorted(aggregate):
        z = list(perturbation_numpy(pool[s], layout).values())
        step = -(F32(0.1) * F32(aggregate[s]))
        expected = [w + step * zi.astype(F32) for w, zi in zip(expected, z, strict=True)]
    replay_(params, pool, aggregate, lr=0.1)
    for p, w in zip(params, expected, strict=True):
        assert p.numpy().tobytes() == w.tobytes()
    with pytest.raises(ZoError, match="seed index 8"):
        replay_(params, pool, {8: 1.0}, lr=0.1)


def tiny_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1))
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    return model, lambda: torch.nn.functional.mse_loss(model(x), y)


def train(grad_scale, steps=6, pool_size=64, client=42, lr=0.05, eps=1e-3):
    model, loss_fn = tiny_model()
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    pool, pid = seed_pool(3, 0, pool_size), seed_pool_id(3, 0, pool_size)
    records = []
    for index in derived_seed_indices(pid, 1, client, steps, pool_size):
        g = spsa_step_(params, loss_fn, pool[index], eps, lr, grad_scale=grad_scale)
        records.append(ZoRecord(index, g))
    return start, [p.detach() for p in params], records, pid


def digest(tensors):
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in tensors)).hexdigest()


def test_replaying_a_clients_records_rebuilds_it_exactly_in_process():
    start, trained, records, _ = train(grad_scale=None)
    rebuilt = [t.clone() for t in start]
    replay_records_(rebuilt, seed_pool(3, 0, 64), records, lr=0.05, eps=1e-3)
    assert digest(rebuilt) == digest(trained) != digest(start)
    # The design matters: g rounded to one byte only after training no longer rebuilds the client.
    codes, scale = quantize_grads([r.grad for r in records])
    lossy = [
        ZoRecord(r.seed_index, g)
        for r, g in zip(records, dequantize_grads(codes, scale), strict=True)
    ]
    rebuilt = [t.clone() for t in start]
    replay_records_(rebuilt, seed_pool(3, 0, 64), lossy, lr=0.05, eps=1e-3)
    assert digest(rebuilt) != digest(trained)


REPLAY_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys, torch
    from fedft.zo.replay import replay_records_
    from fedft.zo.seeds import seed_pool
    from fedft.wire.zo_reply import decode_zo_reply

    torch.set_num_threads(1)  # the training process used the default thread count
    start = torch.load(sys.argv[1])
    for path in sys.argv[2:]:
        params = [t.clone() for t in start]
        reply = decode_zo_reply(open(path, "rb").read(), pool_size=64, max_steps=6)
        replay_records_(params, seed_pool(3, 0, 64), reply.records, lr=0.05, eps=1e-3)
        print(hashlib.sha256(b"".join(t.numpy().tobytes() for t in params)).hexdigest())
    """
)


@pytest.mark.integration
def test_replay_in_another_process_from_the_wire_is_bit_exact(tmp_path):
    scale = float(F32(0.5 / 127))
    start, trained_int8, records_int8, pid = train(grad_scale=scale)
    _, trained_fp32, records_fp32, _ = train(grad_scale=None)
    common = {"pool_id": pid, "round": 1, "client": 42, "pool_size": 64}
    (tmp_path / "int8.bin").write_bytes(encode_zo_reply(records_int8, grad_scale=scale, **common))
    (tmp_path / "fp32.bin").write_bytes(
        encode_zo_reply(records_fp32, grad_encoding="fp32", **common)
    )
    torch.save(start, tmp_path / "start.pt")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            REPLAY_SCRIPT,
            tmp_path / "start.pt",
            tmp_path / "int8.bin",
            tmp_path / "fp32.bin",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    assert result.stdout.split() == [digest(trained_int8), digest(trained_fp32)]


# ---- catch-up --------------------------------------------------------------------------------


def test_catch_up_compares_history_and_checkpoint_bytes():
    assert [index_width(k) for k in (1, 256, 257, 65536, 65537, 2**32)] == [1, 1, 2, 2, 4, 4]
    assert history_bytes(10, 4096) == 10 * (2 + 4)
    assert prefer_replay(10, 4096, trainable_numel=1000)  # 60 B of history < 4000 B
    assert not prefer_replay(1000, 4096, trainable_numel=100)
    assert not prefer_replay(10, 4096, trainable_numel=1000, max_replay_passes=5)
