"""[privacy]: the accountant against dp-accounting and Flower, clipping, noise, config errors.

Statistical tests draw from fixed seeds, so they are deterministic; the bounds are chosen so that
a test would fail for a random seed with probability below 1e-5 (stated per test).
"""

import math

import numpy as np
import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

from fedft.config import Scenario, load_scenario
from fedft.errors import ConfigError
from fedft.privacy import mechanisms
from fedft.privacy.accountant import PrivacyAccountant, Release, calibrate_noise, epsilon_of
from fedft.privacy.plan import noise_multiplier, round_release
from fedft.privacy.zo import (
    client_indices,
    clip_grad,
    clip_records,
    local_grad,
    noisy_seed_means,
    step_compositions,
    stochastic_round,
)
from fedft.zo.seeds import ZoRecord

# |z| > 4.5 for a standard normal statistic: probability 6.8e-6 (two-sided).
Z = 4.5


def scenario(**privacy) -> Scenario:
    return Scenario.from_dict({"privacy": {"mode": "central", "noise_multiplier": 1.0, **privacy}})


# --- the accountant -----------------------------------------------------------------------------


def test_epsilon_equals_dp_accountings_own_rdp_accountant():
    library = RdpAccountant()
    library.compose(dp_event.GaussianDpEvent(1.1), 5)
    assert epsilon_of([Release(1.1)] * 5, 1e-5) == pytest.approx(library.get_epsilon(1e-5), 1e-12)
    sampled = RdpAccountant()
    inner = dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(2.0), 20)
    sampled.compose(dp_event.PoissonSampledDpEvent(0.2, inner), 30)
    ours = epsilon_of([Release(2.0, 20, 0.2)] * 30, 1e-5)
    assert ours == pytest.approx(sampled.get_epsilon(1e-5), 1e-12)


def test_epsilon_equals_flowers_accountant_for_poisson_sampling():
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant as FlowerRdp

    config = PrivacyConfig(
        target_delta=1e-5,
        population_size=100,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.POISSON,
    )
    flower = FlowerRdp(config)
    flower.compose(GaussianPrivacyEvent(0.8, sample_size=10, population_size=100), count=50)
    assert epsilon_of([Release(0.8, 1, 0.1)] * 50, 1e-5) == pytest.approx(
        flower.get_epsilon(1e-5), 1e-12
    )


def test_a_known_configuration():
    # One Gaussian release at sigma = 1: the RDP bound at delta 1e-5 is 4.73 (its orders' min).
    assert epsilon_of([Release(1.0)], 1e-5) == pytest.approx(4.7285, abs=1e-3)
    assert epsilon_of([], 1e-5) == 0.0


def test_calibrated_noise_meets_the_target_tightly():
    def releases(sigma):
        return [Release(sigma, 50)] * 3

    sigma = calibrate_noise(releases, 8.0, 1e-5)
    assert epsilon_of(releases(sigma), 1e-5) <= 8.0
    assert epsilon_of(releases(sigma * 0.999), 1e-5) > 8.0


def test_accountant_restored_from_its_state_continues_the_budget():
    whole = PrivacyAccountant(1e-5, budget=10.0)
    for _ in range(4):
        whole.spend(Release(1.5, 2))
    first = PrivacyAccountant(1e-5, budget=10.0)
    first.spend(Release(1.5, 2))
    first.spend(Release(1.5, 2))
    resumed = PrivacyAccountant(1e-5, budget=10.0)
    resumed.load_state(first.state())
    resumed.spend(Release(1.5, 2))
    resumed.spend(Release(1.5, 2))
    assert resumed.epsilon == whole.epsilon
    assert not PrivacyAccountant(1e-5, 10.0).would_exceed(Release(1.5, 2))
    assert resumed.would_exceed(Release(0.5, 50))


# --- the plan ----------------------------------------------------------------------------------


def test_first_order_rounds_release_once_local_at_half_the_multiplier():
    assert round_release(scenario(), 1, 1.0) == Release(1.0, 1, 1.0)
    local = Scenario.from_dict(
        {
            "federation": {"strategy": "fedit"},
            "privacy": {"mode": "local", "noise_multiplier": 2.0},
        }
    )
    assert round_release(local, 1, 2.0) == Release(1.0, 1, 1.0)


def test_sampling_amplification_only_when_asked_and_central():
    fed = {"num_clients": 10, "fraction_train": 0.3}
    plain = Scenario.from_dict(
        {"federation": fed, "privacy": {"mode": "central", "noise_multiplier": 1.0}}
    )
    assert round_release(plain, 1, 1.0).sampling_rate == 1.0
    amplified = Scenario.from_dict(
        {
            "federation": fed,
            "privacy": {"mode": "central", "noise_multiplier": 1.0, "amplification": True},
        }
    )
    assert round_release(amplified, 1, 1.0).sampling_rate == 0.3


def test_zo_rounds_count_every_step_and_repeated_seeds_twice_over():
    zo = Scenario.from_dict(
        {
            "federation": {"strategy": "zo", "num_clients": 3},
            "zo": {"local_steps": 50, "pool_size": 64},
            "privacy": {"mode": "central", "noise_multiplier": 1.0},
        }
    )
    indices = client_indices(0, 1, 3, 50, 64)
    expected = max(sum(c.count(s) ** 2 for s in set(c)) for c in indices)
    assert expected > 50  # 50 draws from 64 seeds repeat some
    assert round_release(zo, 1, 1.0).count == expected
    assert step_compositions([[1, 2, 3], [4, 4, 5]]) == 5
    local = Scenario.from_dict(
        {**zo.to_dict(), "privacy": {"mode": "local", "noise_multiplier": 1.0}}
    )
    assert round_release(local, 1, 1.0) == Release(0.5, 50, 1.0)


def test_target_epsilon_picks_the_noise_for_every_planned_round():
    s = Scenario.from_dict(
        {
            "federation": {"num_rounds": 4},
            "privacy": {"mode": "central", "target_epsilon": 3.0},
        }
    )
    sigma = noise_multiplier(s)
    assert epsilon_of([round_release(s, r, sigma) for r in range(1, 5)], 1e-5) <= 3.0
    assert epsilon_of([round_release(s, r, sigma * 0.999) for r in range(1, 5)], 1e-5) > 3.0


# --- clipping and noise ------------------------------------------------------------------------


def test_clip_update_bounds_the_joint_norm_and_keeps_the_direction():
    g = torch.Generator().manual_seed(0)
    update = {"a": torch.randn(8, 16, generator=g), "b": torch.randn(16, 8, generator=g) * 3}
    clipped, norm = mechanisms.clip_update(update, 0.7)
    assert norm == pytest.approx(mechanisms.l2_norm(update))
    assert mechanisms.l2_norm(clipped) <= 0.7
    assert mechanisms.l2_norm(clipped) == pytest.approx(0.7, rel=1e-5)
    ratio = clipped["a"] / update["a"]
    assert torch.allclose(ratio, torch.full_like(ratio, 0.7 / norm), rtol=1e-5)
    small = {"a": torch.full((2, 2), 0.1)}
    same, _ = mechanisms.clip_update(small, 1.0)
    assert torch.equal(same["a"], small["a"])


def test_noise_has_the_right_standard_deviation():
    """n = 200k draws: |s^2 / sigma^2 - 1| <= Z sqrt(2 / n) (false failure 7e-6 per bound)."""
    g = torch.Generator().manual_seed(1234)
    template = {"a": torch.zeros(400, 250), "b": torch.zeros(250, 400)}
    std, m = 0.5 * 1.3, 4  # sigma C over m clients
    mean = mechanisms.noisy_mean_update([template] * m, template, m, std, g)
    values = torch.cat([t.flatten() for t in mean.values()]).double() * m
    n = values.numel()
    assert abs(float(values.mean())) <= Z * std / math.sqrt(n)
    assert abs(float(values.var()) / std**2 - 1) <= Z * math.sqrt(2 / n)


def test_zo_central_noise_has_the_right_standard_deviation_on_every_seed():
    """Per-seed means over 100k seeds of zero sums: variance within Z sqrt(2 / n) (7e-6)."""
    rng = np.random.default_rng(99)
    std, m, n = 32.0 * 2.0, 5, 100_000
    out = noisy_seed_means({}, range(n), m, std, rng)
    values = np.array([out.get(s, 0.0) for s in range(n)]) * m
    assert abs(values.mean()) <= Z * std / math.sqrt(n)
    assert abs(values.var() / std**2 - 1) <= Z * math.sqrt(2 / n)


def test_zo_local_grad_is_clipped_noised_and_unbiased_on_the_int8_grid():
    rng = np.random.default_rng(5)
    clip, std, scale = 4.0, 2.0, 32.0 / 127
    draws = np.array([local_grad(100.0, clip, std, scale, rng) for _ in range(40_000)])
    codes = draws / np.float32(scale)
    assert np.allclose(codes, np.round(codes), atol=1e-3)  # on the grid the encoder reads
    n = draws.size
    # mean of clip(100) + N(0, 2^2) + rounding (variance <= scale^2 / 4): within Z standard errors
    sd = math.sqrt(std**2 + scale**2 / 4)
    assert abs(draws.mean() - clip) <= Z * sd / math.sqrt(n)
    rounded = np.array([stochastic_round(0.3, scale, rng) for _ in range(40_000)])
    assert abs(rounded.mean() - 0.3) <= Z * (scale / 2) / math.sqrt(40_000)


def test_zo_clipping_keeps_the_encoded_value_within_the_bound():
    scale = 32.0 / 127
    for g in (-100.0, -3.3, 0.0, 2.9, 1e6):
        c = clip_grad(g, 3.0, scale)
        assert abs(c) <= 3.0 and abs(round(c / np.float32(scale)) * np.float32(scale)) <= 3.0
    records = clip_records([ZoRecord(1, 50.0), ZoRecord(2, -0.5)], 2.0)
    assert records == (ZoRecord(1, 2.0), ZoRecord(2, -0.5))


def test_zo_clipping_stays_within_a_c_that_float32_rounds_up():
    clip = 1e-3  # float32(1e-3) = 0.0010000000475 > 1e-3: the bound is the float32 below
    assert float(np.float32(clip)) > clip
    assert 0 < clip_grad(1.0, clip, None) <= clip and clip_grad(-1.0, clip, None) >= -clip
    assert all(
        abs(r.grad) <= clip for r in clip_records([ZoRecord(1, 5.0), ZoRecord(2, -5.0)], clip)
    )


# --- config --------------------------------------------------------------------------------------


def test_privacy_is_off_by_default():
    assert not Scenario().privacy.enabled


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"privacy": {"mode": "central"}}, "privacy.noise_multiplier"),
        (
            {"privacy": {"mode": "local", "clip_norm": 0.0, "noise_multiplier": 1.0}},
            "privacy.clip_norm",
        ),
        (
            {"privacy": {"mode": "central", "noise_multiplier": 1, "target_delta": 1.0}},
            "privacy.target_delta",
        ),
        ({"privacy": {"mode": "central", "noise_multiplier": -1.0}}, "privacy.noise_multiplier"),
        ({"privacy": {"mode": "loud"}}, "privacy.mode"),
        (
            {
                "federation": {"strategy": "lora_fair"},
                "privacy": {"mode": "central", "noise_multiplier": 1},
            },
            "privacy.mode",
        ),
        (
            {
                "robust": {"aggregator": "median"},
                "privacy": {"mode": "central", "noise_multiplier": 1},
            },
            "robust.aggregator",
        ),
        (
            {
                "federation": {"strategy": "ferret"},
                "ferret": {"trainable_modules": ["lm_head"]},
                "privacy": {"mode": "central", "noise_multiplier": 1},
            },
            "ferret.trainable_modules",
        ),
        (
            {
                "client": {"backend": "zo"},
                "federation": {"strategy": "fedit"},
                "privacy": {"mode": "central", "noise_multiplier": 1},
            },
            "client.backend",
        ),
    ],
)
def test_bad_privacy_settings_name_their_key(raw, key):
    with pytest.raises(ConfigError) as err:
        Scenario.from_dict(raw)
    assert err.value.key == key
    assert "\n" not in str(err.value)


def test_a_private_zo_run_refuses_the_adaptive_int8_scale():
    raw = {
        "federation": {"strategy": "zo"},
        "zo": {"grad_scale_rule": "adaptive"},
        "privacy": {"mode": "central", "noise_multiplier": 1.0},
    }
    with pytest.raises(ConfigError) as err:
        Scenario.from_dict(raw)
    assert err.value.key == "zo.grad_scale_rule"


def test_privacy_from_overrides():
    s = load_scenario(None, ["privacy.mode=local", "privacy.noise_multiplier=0.5"])
    assert s.privacy.mode == "local" and s.privacy.noise_multiplier == 0.5


def test_the_round_line_and_the_plot_show_the_epsilon_spent():
    from fedft.plots import metrics_figure
    from fedft.report import _progress_line

    rows = [
        {"kind": "round", "round": 0, "eval_loss": 5.0, "clients": 0},
        {
            "kind": "round",
            "round": 1,
            "eval_loss": 4.0,
            "train_loss": 4.5,
            "clients": 3,
            "bytes_up": 10,
            "bytes_down": 20,
            "wall_s": 1.0,
            "privacy.epsilon": 4.73,
        },
        {
            "kind": "round",
            "round": 2,
            "eval_loss": 3.5,
            "train_loss": 4.0,
            "clients": 3,
            "bytes_up": 10,
            "bytes_down": 20,
            "wall_s": 1.0,
            "privacy.epsilon": 7.08,
        },
    ]
    assert "epsilon 7.08" in _progress_line(rows[2], 2)
    fig = metrics_figure(rows, "t")
    (ax,) = [a for a in fig.axes if a.get_ylabel() == "epsilon spent (privacy)"]
    assert list(ax.lines[0].get_ydata()) == [4.73, 7.08]
