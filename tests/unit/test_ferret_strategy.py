"""The ferret strategy and Ferret replies on the server: aggregation, catch-up, checkpoints, hostile
replies (real strategies, replies built by hand as in ``tests/unit/replies.py``)."""

import base64

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedft.algorithms.fedavg import weighted_average
from fedft.config import FerretSection, RobustSection, load_scenario
from fedft.errors import ConfigError
from fedft.factors import factors_digest
from fedft.ferret.aggregate import FerretCoordinates, client_coordinates, rebuild_, replay_history_
from fedft.ferret.blocks import state_blocks
from fedft.flower_records import FERRET_HISTORY_KEY, FERRET_REPLY_KEY, factors_to_record
from fedft.wire.ferret import decode_ferret_history, decode_ferret_reply, encode_ferret_reply
from fedft.wire.order import in_zo_order
from fedft.zo.seeds import seed_pool_id
from server.strategies.fedit import FedIT
from server.strategies.ferret import FerretStrategy
from tests.unit.replies import GLOBAL, NUM_CLIENTS, ROUND, RUN_SEED, Grid, moved, reply, run_round

FERRET = FerretSection(pool_size=16, server_lr=0.5)
BLOCKS = state_blocks(GLOBAL)


def coordinates(client, end, start=GLOBAL, round=ROUND):
    return client_coordinates(
        in_zo_order(start),
        in_zo_order(end),
        BLOCKS,
        run_seed=RUN_SEED,
        round=round,
        client=client,
        pool_size=FERRET.pool_size,
    )


def ferret_reply(node, coords, examples=10.0, client=None, round=ROUND, **metrics):
    client = node - 1 if client is None else client
    payload = encode_ferret_reply(
        coords,
        pool_id=seed_pool_id(RUN_SEED, round, FERRET.pool_size),
        round=round,
        client=client,
        encoding=FERRET.coord_encoding,
    )
    return reply(node, {FERRET_REPLY_KEY: ConfigRecord({"coords": payload})}, examples, metrics)


def honest(node):
    return ferret_reply(node, coordinates(node - 1, moved(node, 0.05)), examples=10.0 * node)


def make(kind="ferret", **robust):
    common = {
        "ferret": FERRET,
        "run_seed": RUN_SEED,
        "num_clients": NUM_CLIENTS,
        "robust": RobustSection(**robust),
        "min_available_nodes": 1,
        "min_train_nodes": 1,
    }
    return FerretStrategy(**common) if kind == "ferret" else FedIT(**common)


def sent(coords, client):
    """The coordinates as the server decodes them (int8 or int4: dequantized)."""
    encoding = FERRET.coord_encoding
    payload = encode_ferret_reply(coords, pool_id=0, round=ROUND, client=client, encoding=encoding)
    return decode_ferret_reply(
        payload, num_blocks=len(BLOCKS), pool_size=FERRET.pool_size
    ).coordinates


def rebuilt(coords, client):
    coords = sent(coords, client)
    factors = {k: v.clone() for k, v in GLOBAL.items()}
    rebuild_(
        in_zo_order(factors),
        BLOCKS,
        coords,
        run_seed=RUN_SEED,
        round=ROUND,
        client=client,
        pool_size=FERRET.pool_size,
        scaling=FERRET.scaling,
        server_lr=FERRET.server_lr,
    )
    return factors


def test_a_ferret_round_applies_the_aggregate_every_node_can_replay():
    strategy = make()
    factors = run_round(strategy, [honest(n) for n in (1, 2, 3)])
    assert factors is not None and factors_digest(factors) != factors_digest(GLOBAL)
    (entry,) = strategy.history
    replayed = {k: v.clone() for k, v in GLOBAL.items()}
    replay_history_(in_zo_order(replayed), BLOCKS, [entry], RUN_SEED, FERRET.server_lr)
    assert factors_digest(replayed) == factors_digest(factors)
    # the aggregate is the FedAvg of the three clients' rebuilt updates (up to float rounding)
    rebuilds = [rebuilt(coordinates(n - 1, moved(n, 0.05)), n - 1) for n in (1, 2, 3)]
    average = weighted_average(rebuilds, [10.0, 20.0, 30.0])
    for name in factors:
        torch.testing.assert_close(factors[name], average[name], rtol=1e-5, atol=1e-6)


def test_a_node_that_missed_a_round_gets_the_history_and_reaches_the_servers_bits():
    strategy = make()
    factors = run_round(strategy, [honest(n) for n in (1, 2, 3)])
    messages = strategy.configure_train(2, factors_to_record(factors), ConfigRecord(), Grid([9]))
    (message,) = messages
    history = message.content["config"][FERRET_HISTORY_KEY]
    rounds = decode_ferret_history(
        history, run_seed=RUN_SEED, pool_size=FERRET.pool_size, num_blocks=len(BLOCKS)
    )
    node = {k: v.clone() for k, v in GLOBAL.items()}  # node 9's copy: the initial adapter
    replay_history_(in_zo_order(node), BLOCKS, rounds, RUN_SEED, FERRET.server_lr)
    assert factors_digest(node) == factors_digest(factors)
    assert "arrays" not in message.content.array_records  # the history is smaller


def test_checkpoint_state_round_trips():
    strategy = make()
    run_round(strategy, [honest(n) for n in (1, 2)])
    state = strategy.state()
    restored = make()
    restored.load_state(state)
    assert [(h.round, dict(h.aggregate)) for h in restored.history] == [
        (h.round, dict(h.aggregate)) for h in strategy.history
    ]
    assert restored.synced == strategy.synced == {1: 0, 2: 0}
    assert base64.b64decode(state["history"])


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: ferret_reply(4, coordinates(3, moved(4, 0.05)), round=2), id="round"),
        pytest.param(
            lambda: ferret_reply(4, coordinates(3, moved(4, 0.05)), client=NUM_CLIENTS),
            id="client",
        ),
        pytest.param(
            lambda: ferret_reply(
                4, FerretCoordinates((2,), (np.ones(2, np.float32),))
            ),  # one block, the run has more
            id="blocks",
        ),
        pytest.param(
            lambda: ferret_reply(4, coordinates(3, moved(4, 50.0))), id="update-norm"
        ),  # a rebuilt change far beyond robust.max_update_norm
        pytest.param(
            lambda: reply(4, {FERRET_REPLY_KEY: ConfigRecord({"coords": "text"})}), id="not-bytes"
        ),
        pytest.param(
            lambda: reply(4, {FERRET_REPLY_KEY: ConfigRecord({"coords": b"\xff\x00"})}),
            id="garbage",
        ),
    ],
)
@pytest.mark.parametrize("kind", ["ferret", "fedit"])
def test_a_hostile_ferret_reply_is_dropped_and_the_others_aggregate_as_without_it(kind, bad):
    clean = run_round(make(kind, max_update_norm=5.0), [honest(n) for n in (1, 2, 3)])
    strategy = make(kind, max_update_norm=5.0)
    with_bad = run_round(strategy, [honest(n) for n in (1, 2, 3)] + [bad()])
    assert factors_digest(with_bad) == factors_digest(clean)
    if kind == "ferret":
        assert strategy.synced == {1: 0, 2: 0, 3: 0}


def test_ferret_clients_in_a_fedit_round_are_averaged_as_their_rebuilt_factors():
    coords = coordinates(0, moved(1, 0.05))
    first_order = moved(2, 0.05)
    record = ArrayRecord({k: v.contiguous() for k, v in first_order.items()})
    factors = run_round(
        make("fedit"),
        [
            ferret_reply(1, coords, examples=10.0),
            reply(2, {"arrays": record}, 30.0),
        ],
    )
    expected = weighted_average([rebuilt(coords, 0), first_order], [10.0, 30.0])
    for name in factors:
        torch.testing.assert_close(factors[name], expected[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["federation.strategy='ferret'", "client.backend='zo'"], "client.backend"),
        (["ferret.pool_size=1"], "ferret.pool_size"),
        (["ferret.pool_size=70000"], "ferret.pool_size"),
        (["ferret.server_lr=0"], "ferret.server_lr"),
        (["ferret.scaling='biased'"], "ferret.scaling"),
        (["ferret.block_size=-1"], "ferret.block_size"),
    ],
)
def test_ferret_settings_are_checked_at_the_edge(overrides, key):
    with pytest.raises(ConfigError) as error:
        load_scenario(None, overrides)
    assert error.value.key == key
