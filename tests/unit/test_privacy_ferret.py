"""Ferret coordinates under ``[privacy]``: clipped before projecting, the release bounded on real
replies (device and server), the noise's standard deviation, the accountant's epsilon."""

import logging
import math

import numpy as np
import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from flwr.app import ConfigRecord

from clients.ferret_client import ferret_reply
from clients.replies import FactorReply
from fedft.config import Scenario
from fedft.ferret.aggregate import client_coordinates, client_slots
from fedft.ferret.blocks import state_blocks
from fedft.flower_records import FERRET_REPLY_KEY, factors_to_record, record_to_factors
from fedft.privacy import mechanisms
from fedft.privacy.ferret import clip_scaled, private_coordinates, private_counts
from fedft.wire.ferret import decode_ferret_reply, encode_ferret_reply
from fedft.wire.order import in_zo_order
from fedft.zo.seeds import seed_pool_id
from server.privacy import ServerPrivacy
from server.strategies.ferret import FerretStrategy
from tests.unit.replies import GLOBAL, NUM_CLIENTS, ROUND, RUN_SEED, Grid, moved, reply

Z = 4.5  # |z| > 4.5 for a (near) standard normal statistic: probability 6.8e-6
POOL = 16
BLOCKS = state_blocks(GLOBAL)
SIZES = [b.size for b in BLOCKS]


def scenario(mode="central", clip=0.05, sigma=1e-9, encoding="fp32"):
    return Scenario.from_dict(
        {
            "run": {"seed": RUN_SEED},
            "federation": {"strategy": "ferret", "num_clients": NUM_CLIENTS},
            "partition": {"method": "iid"},
            "ferret": {"pool_size": POOL, "coord_encoding": encoding},
            "privacy": {"mode": mode, "clip_norm": clip, "noise_multiplier": sigma},
        }
    )


def decoded(payload, encoding="fp32"):
    return decode_ferret_reply(
        payload,
        num_blocks=len(BLOCKS),
        pool_size=POOL,
        pool_id=seed_pool_id(RUN_SEED, ROUND, POOL),
        round=ROUND,
        num_clients=NUM_CLIENTS,
        encoding=encoding,
    )


def slots_of(coords, client, scaling="unbiased"):
    return client_slots(
        coords,
        BLOCKS,
        pool_id=seed_pool_id(RUN_SEED, ROUND, POOL),
        round=ROUND,
        client=client,
        pool_size=POOL,
        scaling=scaling,
    )


def device_reply(s, node, size=0.5):
    """What a real Ferret client sends for a round from GLOBAL to ``moved(node, size)``."""
    return ferret_reply(FactorReply(moved(node, size), {}), s, GLOBAL, ROUND, node)


def norm(slots):
    return math.sqrt(sum(v * v for v in slots.values()))


def test_the_device_clips_the_update_before_projecting_on_k_fixed_seeds():
    s = scenario(clip=0.05)
    r = device_reply(s, node=2)
    coords = decoded(r.payload).coordinates
    assert list(coords.counts) == private_counts(len(BLOCKS), POOL) == [POOL] * len(BLOCKS)
    # the same as projecting the clipped update, then bounding the scaled coordinates
    update = mechanisms.update_of(moved(2, 0.5), GLOBAL)
    clipped, raw = mechanisms.clip_update(update, 0.05)
    assert raw > 1.0  # the update is 20x over C: the clip binds
    end = mechanisms.apply_update(GLOBAL, clipped)
    expected = client_coordinates(
        in_zo_order(dict(GLOBAL)),
        in_zo_order(end),
        BLOCKS,
        run_seed=RUN_SEED,
        round=ROUND,
        client=2,
        pool_size=POOL,
        counts=[POOL] * len(BLOCKS),
    )
    expected, _ = clip_scaled(expected, SIZES, "unbiased", 0.05)
    for got, want in zip(coords.coords, expected.coords, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("scaling", ["unbiased", "projection"])
def test_the_released_scaled_coordinates_never_exceed_c(scaling):
    rng = np.random.default_rng(0)
    for trial in range(20):
        flats = [rng.normal(0, 10.0 ** rng.uniform(-3, 1), d).astype(np.float32) for d in SIZES]
        coords = client_coordinates(
            in_zo_order(dict(GLOBAL)),
            in_zo_order(
                {
                    k: v - torch.from_numpy(f.reshape(v.shape))
                    for (k, v), f in zip(GLOBAL.items(), flats, strict=True)
                }
            ),
            BLOCKS,
            run_seed=RUN_SEED,
            round=ROUND,
            client=trial % NUM_CLIENTS,
            pool_size=POOL,
            counts=[POOL] * len(BLOCKS),
        )
        clip = float(10.0 ** rng.uniform(-4, 0))
        out, before = clip_scaled(coords, SIZES, scaling, clip)
        assert norm(slots_of(out, trial % NUM_CLIENTS, scaling)) <= clip
        if before <= clip:
            assert out is coords


def test_the_server_clips_every_decoded_reply_to_c(caplog):
    privacy = ServerPrivacy(scenario(clip=0.05))
    honest = slots_of(decoded(device_reply(scenario(clip=0.05), node=1).payload).coordinates, 1)
    assert norm(honest) <= 0.05
    raw = client_coordinates(  # a device that did not clip: 20x over
        in_zo_order(dict(GLOBAL)),
        in_zo_order(moved(3, 0.5)),
        BLOCKS,
        run_seed=RUN_SEED,
        round=ROUND,
        client=3,
        pool_size=POOL,
        counts=[POOL] * len(BLOCKS),
    )
    payload = encode_ferret_reply(
        raw, pool_id=seed_pool_id(RUN_SEED, ROUND, POOL), round=ROUND, client=3, encoding="fp32"
    )
    hostile = slots_of(decoded(payload).coordinates, 3)
    assert norm(hostile) > 1.0
    with caplog.at_level(logging.WARNING, logger="fedft.server"):
        alone = privacy.ferret_means(ROUND, [(4, hostile)], len(BLOCKS), sampled=1)
    assert "node 4's Ferret coordinates' norm" in caplog.text
    assert norm(alone) <= 0.05 * (1 + 1e-6)
    both = privacy.ferret_means(ROUND, [(2, honest), (4, hostile)], len(BLOCKS), sampled=2)
    assert norm({s: 2 * v for s, v in both.items()}) <= 0.1 * (1 + 1e-6)


def test_central_noise_on_every_slot_has_std_sigma_c_over_m():
    sigma, clip, m = 3.0, 0.05, 4
    privacy = ServerPrivacy(scenario(clip=clip, sigma=sigma))
    privacy.rng = np.random.default_rng(0)  # fixed seed: the test is reproducible
    draws = []
    for _ in range(200):
        means = privacy.ferret_means(ROUND, [], len(BLOCKS), sampled=m)
        assert set(means) == set(range(len(BLOCKS) * POOL))  # every slot of every block
        draws.extend(means.values())
    x = np.asarray(draws) * m
    n = len(x)
    z = (x.var() / (sigma * clip) ** 2 - 1) / math.sqrt(2 / n)  # chi-square, ~N(0, 1) at large n
    assert abs(z) < Z
    assert abs(x.mean()) / (sigma * clip / math.sqrt(n)) < Z


def test_local_noise_on_the_device_has_std_sigma_c_on_the_scaled_coordinates():
    sigma, clip = 2.0, 0.05
    rng = np.random.default_rng(1)  # fixed seed
    coords = decoded(device_reply(scenario(clip=clip), node=5).payload).coordinates
    clean = slots_of(coords, 5)
    noise = []
    for _ in range(100):
        noised = private_coordinates(coords, SIZES, "unbiased", clip, sigma * clip, rng)
        got = slots_of(noised, 5)
        noise.extend(got[s] - clean[s] for s in clean)
    x = np.asarray(noise)
    z = (x.var() / (sigma * clip) ** 2 - 1) / math.sqrt(2 / len(x))
    assert abs(z) < Z
    assert abs(x.mean()) / (sigma * clip / math.sqrt(len(x))) < Z


def test_a_private_ferret_round_spends_one_gaussian_mechanism_per_round():
    for mode, multiplier in (("central", 1.3), ("local", 0.65)):
        privacy = ServerPrivacy(scenario(mode=mode, sigma=1.3))
        for r in (1, 2, 3):
            epsilon = privacy.spend(r)["privacy.epsilon"]
        library = RdpAccountant()
        library.compose(dp_event.GaussianDpEvent(multiplier), 3)
        assert epsilon == pytest.approx(library.get_epsilon(1e-5), rel=1e-9)


def test_the_ferret_strategy_applies_the_clipped_mean_over_the_sampled_clients():
    s = scenario(clip=0.05)
    privacy = ServerPrivacy(s)
    strategy = FerretStrategy(
        ferret=s.ferret,
        run_seed=RUN_SEED,
        num_clients=NUM_CLIENTS,
        robust=s.robust,
        min_available_nodes=1,
        min_train_nodes=1,
        privacy=privacy,
    )
    strategy.configure_train(ROUND, factors_to_record(GLOBAL), ConfigRecord(), Grid([1, 2, 3]))
    payloads = {n: device_reply(s, n).payload for n in (1, 2)}  # node 3 sampled, no reply
    replies = [
        reply(n, {FERRET_REPLY_KEY: ConfigRecord({"coords": p})}, 10.0 * n, {})
        for n, p in payloads.items()
    ]
    arrays, metrics = strategy.aggregate_train(ROUND, replies)
    assert arrays is not None
    assert metrics["privacy.epsilon"] > 0
    entry = strategy.history[-1] if strategy.history else strategy.pending
    expected = {}
    for n, p in payloads.items():
        for slot, v in slots_of(decoded(p).coordinates, n).items():
            expected[slot] = expected.get(slot, 0.0) + v / 3  # equal weights, m = 3 sampled
    for slot, v in expected.items():
        assert entry.aggregate[slot] == pytest.approx(v, rel=1e-5, abs=1e-9)
    assert record_to_factors(arrays).keys() == GLOBAL.keys()
