"""The server's privacy glue on real strategies: every reply clipped, equal weights, noise, epsilon.

Noise multipliers here are tiny (1e-9) so that the clipped sums can be checked exactly; the noise
itself is tested in ``test_privacy.py``.
"""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fedft.algorithms.lora_fair_state import lora_fair_aggregate
from fedft.config import Scenario
from fedft.flower_records import factors_to_record, record_to_factors
from fedft.privacy import mechanisms
from fedft.privacy.zo import client_indices
from server.privacy import ServerPrivacy
from tests.unit.replies import (
    GLOBAL,
    NUM_CLIENTS,
    ROUND,
    RUN_SEED,
    ZO,
    Grid,
    array_reply,
    make_strategy,
    moved,
    zo_payload,
    zo_reply,
)


def privacy(strategy="fedit", mode="central", clip=0.5, sigma=1e-9, **extra):
    scenario = Scenario.from_dict(
        {
            "run": {"seed": RUN_SEED},
            "federation": {"strategy": strategy, "num_clients": NUM_CLIENTS},
            "partition": {"method": "iid"},
            "zo": {"pool_size": ZO.pool_size, "local_steps": ZO.local_steps},
            "privacy": {"mode": mode, "clip_norm": clip, "noise_multiplier": sigma, **extra},
        }
    )
    return ServerPrivacy(scenario)


def with_privacy(kind, settings):
    """A real strategy of ``kind`` (the scaffolding's settings) with ``settings`` on."""
    plain = make_strategy(kind)
    common = {
        "zo": plain.zo,
        "run_seed": RUN_SEED,
        "num_clients": NUM_CLIENTS,
        "robust": plain.robust,
        "min_available_nodes": 1,
        "min_train_nodes": 1,
        "privacy": settings,
    }
    if kind == "lora_fair":
        return type(plain)(solver=plain.solver, **common)
    return type(plain)(**common)


def round_with(strategy, replies, nodes):
    strategy.configure_train(ROUND, factors_to_record(GLOBAL), ConfigRecord(), Grid(nodes))
    arrays, metrics = strategy.aggregate_train(ROUND, replies)
    return (None if arrays is None else record_to_factors(arrays)), metrics


def test_fedit_central_clips_every_reply_and_weighs_them_equally(caplog):
    strategy = with_privacy("fedit", privacy())
    # node 3 did not clip: its update norm is far over C = 0.5 (and it claims many examples)
    replies = [
        array_reply(1, moved(1, 0.01), examples=10),
        array_reply(2, moved(2, 0.01), examples=10),
        array_reply(3, moved(3, 0.5), examples=1000),
    ]
    new, metrics = round_with(strategy, replies, nodes=[1, 2, 3])
    deltas = [
        mechanisms.update_of(moved(k, s), GLOBAL) for k, s in ((1, 0.01), (2, 0.01), (3, 0.5))
    ]
    assert mechanisms.l2_norm(deltas[2]) > 10 * 0.5
    clipped = [mechanisms.clip_update(d, 0.5)[0] for d in deltas]
    expected = {k: GLOBAL[k] + sum(c[k] for c in clipped) / 3 for k in GLOBAL}
    for k in GLOBAL:
        torch.testing.assert_close(new[k], expected[k], rtol=0, atol=1e-6)
    assert "node 3's update norm" in caplog.text and "clipped by the server" in caplog.text
    assert metrics["privacy.epsilon"] > 0


def test_fedit_central_divides_by_the_sampled_clients_not_the_replies():
    strategy = with_privacy("fedit", privacy(clip=100.0))
    new, _ = round_with(strategy, [array_reply(1, moved(1))], nodes=[1, 2])  # node 2 never replied
    delta = mechanisms.update_of(moved(1), GLOBAL)
    for k in GLOBAL:
        torch.testing.assert_close(new[k], GLOBAL[k] + delta[k] / 2, rtol=0, atol=1e-6)


def test_fedit_central_noise_is_sigma_c_over_m_on_a_and_b_whatever_the_claimed_examples():
    """Pins the noise scale of a real strategy's round (issue 18: fedit at epsilon 8 diverged).

    Zero updates, 4 sampled clients claiming 1 to 1000 examples: the new factors minus the old
    are the central noise over ``m``, ``N(0, (sigma C / m)^2)`` on every A and B entry alike (not
    ``sigma C``, not scaled by the examples). Chi-square statistic over 5120 entries per factor
    kind, |z| < 4.5: a false failure has probability ~7e-6 per kind (fixed seed: never flaky).
    """
    sigma, clip, m = 2.0, 0.5, 4
    settings = privacy(clip=clip, sigma=sigma)
    settings.torch_rng = torch.Generator().manual_seed(0)
    noise = {"A": [], "B": []}
    for _ in range(40):
        strategy = with_privacy("fedit", settings)
        replies = [array_reply(n, GLOBAL, examples=e) for n, e in ((1, 1), (2, 10), (3, 1000))]
        new, _ = round_with(strategy, replies, nodes=[1, 2, 3, 4])  # node 4 sampled, silent
        for k in GLOBAL:
            noise[k[-8]].append((new[k] - GLOBAL[k]).double().flatten())
    for kind, parts in noise.items():
        x = torch.cat(parts).numpy()
        assert x.size == 5120, kind
        z = (x.var() / (sigma * clip / m) ** 2 - 1) / np.sqrt(2 / x.size)
        assert abs(z) < 4.5, (kind, x.std())
        assert abs(x.mean()) < 4.5 * sigma * clip / m / np.sqrt(x.size), kind


def test_lora_fair_local_runs_on_the_noised_replies_with_equal_weights():
    strategy = with_privacy("lora_fair", privacy("lora_fair", mode="local", sigma=1.0))
    states = [moved(k) for k in (1, 2, 3)]
    replies = [array_reply(k, s, examples=10.0 * k) for k, s in zip((1, 2, 3), states, strict=True)]
    new, metrics = round_with(strategy, replies, nodes=[1, 2, 3])
    expected, _ = lora_fair_aggregate(states, [1.0, 1.0, 1.0], strategy.solver)
    for k in GLOBAL:
        torch.testing.assert_close(new[k], expected[k])
    assert "lora_fair.cos_after" in metrics and "privacy.epsilon" in metrics


def test_zo_central_clips_every_scalar_and_noises_every_seed_a_client_could_use():
    strategy = with_privacy("zo", privacy("zo", clip=1.5))
    scale = float(np.float32(ZO.grad_scale))  # values on the int8 grid travel exactly
    grads = [[c * scale for c in codes] for codes in ([127, -8, 4, 2], [12, 6, -36, 1])]
    replies = [
        zo_reply(n, zo_payload(client=n - 1, grads=g), examples=10.0 * n)
        for n, g in zip((1, 2), grads, strict=True)
    ]
    new, metrics = round_with(strategy, replies, nodes=[1, 2])
    assert new is not None
    indices = client_indices(RUN_SEED, ROUND, NUM_CLIENTS, ZO.local_steps, ZO.pool_size)
    expected: dict[int, float] = {}
    for client, g in enumerate(grads):
        for s, value in zip(indices[client], g, strict=True):
            expected[s] = expected.get(s, 0.0) + max(min(value, 1.5), -1.5) / 2
    aggregate = strategy.history[-1].aggregate
    for s, a in expected.items():
        assert aggregate[s] == pytest.approx(a, abs=1e-6)
    # seeds no reply stepped on carry (tiny) noise too: the support is every client's seeds
    assert set(aggregate) == {s for c in indices for s in c}
    assert metrics["privacy.epsilon"] > 0


def test_the_budget_is_spent_round_by_round_and_restored_from_state():
    first = privacy(sigma=1.0, target_epsilon=7.5)
    assert not first.exhausted(1)
    first.spend(1)
    first.spend(2)
    assert first.exhausted(3)  # 4.73, 7.08, then 9.0 > 7.5
    resumed = privacy(sigma=1.0, target_epsilon=7.5)
    resumed.load_state(first.state())
    assert resumed.exhausted(3) and resumed.accountant.epsilon == first.accountant.epsilon
    assert "central DP, clip 0.5, noise multiplier 1" in resumed.describe()
