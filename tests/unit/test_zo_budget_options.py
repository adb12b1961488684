"""The zo options that make a step pay: the per-round int8 scale and several directions a step."""

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from fedft.config import load_scenario
from fedft.errors import ConfigError
from fedft.wire.int8 import dequantize_grads, quantize_grads
from fedft.zo.config import ZoSection
from fedft.zo.replay import aggregate_records, replay_records_
from fedft.zo.rng import layout_of, perturbation_numpy
from fedft.zo.scale import MAX_GROWTH, ScaleSchedule, next_scale
from fedft.zo.seeds import ZoError, ZoRecord, seed_pool
from fedft.zo.step import (
    spsa_multi_step_,
    spsa_multi_step_numpy_,
    spsa_step_,
    update_coefficient,
)

F32 = np.float32
POOL = seed_pool(3, 0, 64)


def tensors(seed=0):
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.normal(size=s).astype(np.float32)) for s in [(8, 5), (7,)]]


def loss_of(values, weights):  # float64 on both runtimes: equal losses give equal bits after
    return float(
        sum((np.asarray(v, np.float64) * w).sum() for v, w in zip(values, weights, strict=True))
    )


def digest(ts):
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in ts)).hexdigest()


# ---- the per-round scale ---------------------------------------------------------------------


def test_next_scale_is_twice_the_median_peak_over_127_within_bounds():
    # Peaks 0.5, 1.0, 1.3 (SmolLM2-like |g|): median 1.0 -> 2 / 127.
    grads = [[0.1, -0.5], [1.0, 0.2], [-1.3, 0.0]]
    assert next_scale(0.0, grads, clip=32.0) == float(F32(2.0 / 127))
    # Growth bounded per round, both ways, and never beyond clip / 127.
    assert next_scale(1e-4, grads, clip=32.0) == float(F32(1e-4 * MAX_GROWTH))
    assert next_scale(1.0, grads, clip=200.0) == float(F32(1.0 / MAX_GROWTH))
    assert next_scale(0.0, [[1e6]], clip=32.0) <= 32.0 / 127
    assert next_scale(0.0, [[1e6]], clip=32.0) == pytest.approx(32.0 / 127, rel=1e-6)
    # No zo reply (a first-order round of a mixed run): the scale stays.
    assert next_scale(0.05, [[], []], clip=32.0) == 0.05
    assert next_scale(0.0, [[0.0, 0.0]], clip=32.0) == float(F32(1e-30))


def test_a_hostile_minority_cannot_move_the_scale():
    honest = [[0.4, -0.9], [1.0, 0.1], [-0.8, 0.3]]
    base = next_scale(0.0, honest, clip=32.0)
    hostile = honest + [[32.0] * 2]  # the largest |g| a reply can carry
    assert next_scale(0.0, hostile, clip=32.0) <= float(F32(2 * 1.0 / 127))
    assert next_scale(0.0, hostile, clip=32.0) >= base
    # Even a majority moves it at most MAX_GROWTH x per round.
    assert next_scale(base, [[32.0]] * 5, clip=32.0) <= base * MAX_GROWTH * (1 + 1e-6)


def test_the_schedule_announces_calibration_then_the_fitted_scale_and_resumes():
    zo = ZoSection(grad_scale_rule="adaptive")
    schedule = ScaleSchedule(zo)
    assert schedule.announce(1) == 0.0
    assert schedule.round_zo(1).grad_encoding == "fp32"  # the calibration round is exact float32
    schedule.observe(1, [[0.5, -1.0], [0.7]])
    s2 = schedule.announce(2)
    assert s2 == float(F32(2 * 0.85 / 127))
    assert schedule.round_zo(2).grad_scale == s2 and schedule.round_zo(2).grad_encoding == "int8"
    restored = ScaleSchedule(zo)
    restored.load_state(schedule.state())
    schedule.observe(2, [[0.1]])
    restored.observe(2, [[0.1]])
    assert restored.announce(3) == schedule.announce(3) == float(F32(s2 / MAX_GROWTH))
    # The fixed rule announces nothing and checks replies against the run's own settings.
    fixed = ScaleSchedule(ZoSection())
    assert fixed.announce(1) is None and fixed.round_zo(1) == ZoSection()
    fixed.observe(1, [[3.0]])
    assert fixed.state()["current"] == 0.0


def test_zo_section_checks_the_new_options_at_the_edge():
    assert ZoSection().grad_scale == 32.0 / 127
    assert ZoSection(int8_scale=0.01).grad_scale == 0.01
    assert ZoSection(grad_encoding="fp32").grad_scale is None
    bad = [
        ({"int8_scale": 1.0}, "zo.int8_scale"),  # above grad_clip / 127
        ({"int8_scale": -0.1}, "zo.int8_scale"),
        ({"grad_scale_rule": "adaptive", "grad_encoding": "fp32"}, "zo.grad_scale_rule"),
        ({"grad_scale_rule": "adaptive", "int8_scale": 0.01}, "zo.int8_scale"),
        ({"perturbations": 0}, "zo.perturbations"),
        ({"perturbations": 65}, "zo.perturbations"),
        ({"grad_clip": float("inf")}, "zo.grad_clip"),
    ]
    for kwargs, key in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            ZoSection(**kwargs)
    with pytest.raises(ConfigError, match=r"zo\.grad_scale_rule"):
        load_scenario(None, ["zo.grad_scale_rule='sometimes'"])
    with pytest.raises(ConfigError, match=r"zo\.perturbations"):
        load_scenario(None, ["zo.perturbations=1.5"])
    with pytest.raises(ConfigError, match=r"zo\.grad_rounding"):
        load_scenario(None, ["zo.grad_rounding='up'"])
    assert ZoSection(perturbations=4, local_steps=5).max_records == 20


# ---- several directions a step ---------------------------------------------------------------


def test_one_direction_is_todays_step_bit_for_bit():
    weights = [np.random.default_rng(1).normal(size=t.shape) for t in tensors()]
    a, b = tensors(), tensors()
    g_one = spsa_step_(a, lambda: loss_of(a, weights), POOL[3], 1e-3, 0.05, grad_scale=0.02)
    g_multi = spsa_multi_step_(
        b, lambda: loss_of(b, weights), [POOL[3]], 1e-3, 0.05, grad_scale=0.02
    )
    assert [g_one] == g_multi and digest(a) == digest(b)


@pytest.mark.parametrize("grad_scale", [None, 0.02])
def test_a_multi_direction_step_is_torch_numpy_identical_and_replays_exactly(grad_scale):
    weights = [np.random.default_rng(2).normal(size=t.shape) for t in tensors()]
    params, start = tensors(), tensors()
    arrays = [t.numpy().copy() for t in tensors()]
    records = []
    for step in range(4):
        indices = [(7 * step + j) % 64 for j in range(3)]
        seeds = [POOL[i] for i in indices]
        g_t = spsa_multi_step_(
            params, lambda: loss_of(params, weights), seeds, 1e-3, 0.05, grad_scale=grad_scale
        )
        g_n = spsa_multi_step_numpy_(
            arrays, lambda: loss_of(arrays, weights), seeds, 1e-3, 0.05, grad_scale=grad_scale
        )
        assert g_t == g_n
        if grad_scale is not None:
            codes, _ = quantize_grads(g_t, grad_scale)
            assert g_t == dequantize_grads(codes, grad_scale)
        records += [ZoRecord(i, g) for i, g in zip(indices, g_t, strict=True)]
    assert [a.tobytes() for a in arrays] == [t.numpy().tobytes() for t in params]
    rebuilt = [t.clone() for t in start]
    replay_records_(rebuilt, POOL, records, lr=0.05, eps=1e-3, perturbations=3)
    assert digest(rebuilt) == digest(params) != digest(start)
    # Replayed as 12 one-direction steps, the same records give other tensors.
    other = [t.clone() for t in start]
    replay_records_(other, POOL, records, lr=0.05, eps=1e-3)
    assert digest(other) != digest(params)
    with pytest.raises(ZoError, match="directions"):
        replay_records_([t.clone() for t in start], POOL, records[:5], 0.05, 1e-3, 3)


def test_a_multi_direction_step_descends_along_the_mean_estimate():
    # A linear loss: g_j = <w_lin, z_j> exactly (up to float32), and w moves by -lr/n sum g_j z_j.
    weights = [np.random.default_rng(4).normal(size=t.shape) for t in tensors()]
    params = tensors()
    before = [t.clone().double() for t in params]
    seeds = POOL[:4]
    grads = spsa_multi_step_(params, lambda: loss_of(params, weights), seeds, 1e-2, 1e-3)
    layout = layout_of([(str(k), t) for k, t in enumerate(params)])
    zs = [
        np.concatenate([z.ravel() for z in perturbation_numpy(s, layout).values()]) for s in seeds
    ]
    flat_w = np.concatenate([w.ravel() for w in weights])
    for g, z in zip(grads, zs, strict=True):
        assert g == pytest.approx(float(flat_w @ z), rel=1e-3)
    moved = np.concatenate(
        [(t.double() - b).numpy().ravel() for t, b in zip(params, before, strict=True)]
    )
    expected = -1e-3 / 4 * sum(g * z for g, z in zip(grads, zs, strict=True))
    assert np.allclose(moved, expected, atol=1e-6)


def test_the_aggregate_of_n_direction_steps_is_divided_by_n():
    replies = [[ZoRecord(1, 2.0), ZoRecord(3, -1.0)], [ZoRecord(1, 4.0), ZoRecord(2, 1.0)]]
    one = aggregate_records(replies, [1.0, 3.0])
    two = aggregate_records(replies, [1.0, 3.0], perturbations=2)
    assert one == {1: 3.5, 2: 0.75, 3: -0.25}
    assert two == {s: a / 2 for s, a in one.items()}
    assert update_coefficient(0.05, 2.0, 2) == float(F32(F32(0.05) * F32(2.0) / F32(2)))


# ---- the server announces the scale and holds replies to it ------------------------------------


@pytest.mark.parametrize("kind", ["zo", "fedit"])
def test_the_strategy_announces_each_rounds_scale_and_refuses_other_scales(kind):
    from flwr.app import ConfigRecord

    from fedft.flower_records import ZO_SCALE_KEY, factors_to_record
    from tests.unit.replies import GLOBAL, ZO, Grid, make_strategy, zo_payload, zo_reply

    zo = ZoSection(pool_size=ZO.pool_size, local_steps=4, grad_scale_rule="adaptive")
    strategy = make_strategy(kind, zo=zo)
    sent = strategy.configure_train(1, factors_to_record(GLOBAL), ConfigRecord(), Grid([1, 2, 3]))
    assert {m.content.config_records["config"][ZO_SCALE_KEY] for m in sent} == {0.0}
    fp32 = dataclasses.replace(zo, grad_encoding="fp32", grad_scale_rule="fixed")
    grads = {1: [0.5, -0.2, 0.1, 0.0], 2: [1.0, 0.3, -0.7, 0.2], 3: [1.3, 0.0, 0.1, 0.1]}
    replies = [zo_reply(n, zo_payload(client=n, zo=fp32, grads=grads[n])) for n in (1, 2)]
    replies.append(zo_reply(3, zo_payload(client=3, zo=ZO)))  # int8 at 32 / 127: not this round's
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics["zo.int8_scale"] == 0.0
    if kind == "zo":  # replies 1 and 2 kept, reply 3 dropped
        kept = [strategy.replies.decode_zo(r).records for r in replies[:2]]
        assert strategy.history[-1].aggregate == aggregate_records(kept, [10.0, 10.0])
    state = strategy.state()
    assert state["zo_scale"]["current"] == float(np.float32(2 * 0.75 / 127))
    restored = make_strategy(kind, zo=zo)
    restored.load_state(state)
    assert restored.zo_scales.current == strategy.zo_scales.current
    fixed = make_strategy(kind)
    assert "zo_scale" not in fixed.state()  # the fixed rule's checkpoint is as it was


# ---- stochastic rounding of g (QuZO) ---------------------------------------------------------


def test_stochastic_rounding_is_unbiased_deterministic_and_on_the_int8_grid():
    from fedft.zo.step import quantized_grad

    scale = float(F32(0.25))
    g = 0.1  # nearest rounding sends it as 0: a bias of -0.1 every time
    assert quantized_grad(g, scale, 7, "nearest") == 0.0
    draws = [quantized_grad(g, scale, seed, "stochastic") for seed in POOL]
    assert set(draws) <= {0.0, scale}
    assert np.mean(draws) == pytest.approx(g, abs=0.04)  # 64 draws of a Bernoulli(0.4) x 0.25
    assert draws == [quantized_grad(g, scale, seed, "stochastic") for seed in POOL]
    assert quantized_grad(-1e6, scale, 3, "stochastic") == -127 * scale  # clipped
    assert quantized_grad(0.3, None, 3, "stochastic") == 0.3  # float32 g: nothing to round


def test_stochastic_rounding_steps_replay_exactly_on_both_runtimes():
    weights = [np.random.default_rng(5).normal(size=t.shape) for t in tensors()]
    params, start = tensors(), tensors()
    arrays = [t.numpy().copy() for t in tensors()]
    records = []
    for step in range(5):
        seeds = [POOL[step]]
        kw = {"grad_scale": 0.05, "rounding": "stochastic"}
        g_t = spsa_multi_step_(params, lambda: loss_of(params, weights), seeds, 1e-3, 0.05, **kw)
        g_n = spsa_multi_step_numpy_(
            arrays, lambda: loss_of(arrays, weights), seeds, 1e-3, 0.05, **kw
        )
        assert g_t == g_n
        records.append(ZoRecord(step, g_t[0]))
    rebuilt = [t.clone() for t in start]
    replay_records_(rebuilt, POOL, records, lr=0.05, eps=1e-3)
    assert digest(rebuilt) == digest(params) == digest([torch.from_numpy(a) for a in arrays])


def test_a_private_zo_run_takes_one_direction_a_step():
    with pytest.raises(ConfigError, match=r"zo\.perturbations"):
        load_scenario(
            None,
            [
                "federation.strategy='zo'",
                "privacy.mode='central'",
                "privacy.noise_multiplier=1.0",
                "zo.perturbations=2",
            ],
        )
