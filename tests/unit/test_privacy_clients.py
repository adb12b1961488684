"""The device's privacy glue: a reply's update clipped (and noised in local mode), zo's g hook."""

import math

import numpy as np
import torch

from clients.privacy import private_factors, zo_grad
from clients.replies import FactorReply
from fedft.config import Scenario
from fedft.privacy import mechanisms
from fedft.zo.step import spsa_step

Z = 4.5  # |z| > 4.5 for a standard normal statistic: probability 6.8e-6


def scenario(mode, **privacy):
    return Scenario.from_dict(
        {"privacy": {"mode": mode, "clip_norm": 0.5, "noise_multiplier": 2.0, **privacy}}
    )


def start_and_reply(size=3.0):
    g = torch.Generator().manual_seed(0)
    start = {"a": torch.randn(200, 300, generator=g), "b": torch.randn(300, 200, generator=g)}
    end = {k: v + size * torch.randn(v.shape, generator=g) for k, v in start.items()}
    return start, FactorReply(end, {"train_loss": 1.0})


def test_central_mode_clips_the_update_on_the_device():
    start, reply = start_and_reply()
    out = private_factors(reply, scenario("central"), start)
    delta = mechanisms.update_of(out.factors, start)
    assert mechanisms.l2_norm(delta) <= 0.5 * (1 + 1e-5)
    assert out.metrics == reply.metrics


def test_local_mode_adds_noise_of_std_sigma_c_to_the_clipped_update():
    """Residual variance over 120k weights within Z sqrt(2 / n) of (sigma C)^2 (false fail 7e-6)."""
    start, reply = start_and_reply()
    out = private_factors(reply, scenario("local"), start)
    clipped, _ = mechanisms.clip_update(mechanisms.update_of(reply.factors, start), 0.5)
    noise = torch.cat(
        [
            (out.factors[k].double() - start[k].double() - clipped[k].double()).flatten()
            for k in start
        ]
    )
    n, std = noise.numel(), 2.0 * 0.5
    assert abs(float(noise.mean())) <= Z * std / math.sqrt(n) + 1e-6
    assert abs(float(noise.var()) / std**2 - 1) <= Z * math.sqrt(2 / n) + 1e-5


def test_zo_hook_is_off_without_privacy_and_clips_or_noises_with_it():
    assert zo_grad(Scenario(), 32.0 / 127) is None
    central = zo_grad(scenario("central", clip_norm=3.0), 32.0 / 127)
    assert central(100.0) <= 3.0 and central(-100.0) >= -3.0 and central(1.0) == 1.0
    local = zo_grad(scenario("local", clip_norm=3.0), 32.0 / 127)
    values = np.array([local(100.0) for _ in range(2000)])
    assert values.std() > 3.0  # sigma C = 6
    scale = np.float32(32.0 / 127)
    assert np.allclose(values / scale, np.round(values / scale), atol=1e-3)


def test_spsa_step_applies_the_hook_before_quantizing_and_stepping():
    w = np.zeros(4, dtype=np.float32)
    z = np.array([1.0, -1.0, 0.5, 2.0], dtype=np.float32)

    def perturb(seed, c):
        w[:] = w + np.float32(c) * z

    def loss():
        return float(100.0 * w.sum())  # g = 100 * sum(z) = 250

    grad = spsa_step(perturb, loss, 0, 1e-3, 1e-3, grad_scale=32.0 / 127, privatize=lambda g: 2.0)
    expected = round(2.0 / np.float32(32.0 / 127)) * np.float32(32.0 / 127)
    assert grad == float(np.float32(expected))
    np.testing.assert_allclose(w, -1e-3 * grad * z, rtol=1e-3, atol=1e-9)
