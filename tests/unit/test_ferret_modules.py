"""Ferret on all weights of chosen modules (full-parameter): client round, exact rebuild, config
checks, the server's aggregate of module-weight replies, and the run's output (the weights, not an
adapter)."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from safetensors.torch import load_file

from clients.runtimes.torch_ferret import TorchFerret
from clients.runtimes.torch_lora import client_model
from fedft.config import FerretSection, RobustSection, load_scenario
from fedft.errors import ConfigError
from fedft.factors import factors_digest
from fedft.ferret.aggregate import client_coordinates, rebuild_, replay_history_
from fedft.ferret.blocks import state_blocks
from fedft.flower_records import FERRET_REPLY_KEY, factors_to_record, record_to_factors
from fedft.run_outputs import write_outputs
from fedft.wire.ferret import decode_ferret_reply, encode_ferret_reply
from fedft.wire.order import in_zo_order
from fedft.zo.seeds import seed_pool_id
from fedft.zo.trainable import check_trained_modules, initial_state
from server.strategies.ferret import FerretStrategy
from tests.unit.replies import Grid, reply

MODULES = ["lm_head", "down_proj"]
FERRET = [
    "federation.strategy='ferret'",
    "federation.num_clients=2",
    "partition.method='iid'",
    "train.local_steps=4",
    "ferret.pool_size=16",
    f"ferret.trainable_modules={MODULES}",
]


def test_module_weights_train_first_order_and_every_party_rebuilds_the_same_bits():
    scenario = load_scenario("simulations/default.toml", FERRET)
    assert scenario.trained_modules == tuple(MODULES)
    model, _ = client_model(scenario, 0)
    start = initial_state(model, MODULES)
    assert sorted(start) == [
        "base_model.model.lm_head.base_layer.weight",
        "base_model.model.model.layers.0.mlp.down_proj.base_layer.weight",
        "base_model.model.model.layers.1.mlp.down_proj.base_layer.weight",
    ]
    reply = TorchFerret().train_round(scenario, 0, start, server_round=1, node=1)
    end = reply.factors
    assert sorted(end) == sorted(start) and reply.metrics["steps"] == 4.0
    assert all(not torch.equal(end[k], start[k]) for k in start)  # every chosen weight trained
    # the shared model is given back: initial weights, only the LoRA factors require gradients
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k].detach(), start[k]) for k in start)
    assert all(p.requires_grad == ("lora_" in n) for n, p in params.items())
    assert reply.metrics["start_digest"] == float(factors_digest(start))

    blocks = state_blocks(start, scenario.ferret.block_size)
    decoded = decode_ferret_reply(
        reply.payload, num_blocks=len(blocks), pool_size=scenario.ferret.pool_size
    )
    assert decoded.client == 1 and len(reply.payload) < 4 * sum(t.numel() for t in start.values())
    window = {"round": 1, "client": 1, "pool_size": 16, "scaling": "unbiased", "server_lr": 1.0}
    server = {k: v.clone() for k, v in start.items()}
    rebuild_(in_zo_order(server), blocks, decoded.coordinates, run_seed=0, **window)
    numpy_view = {k: v.numpy().copy() for k, v in start.items()}
    rebuild_(in_zo_order(numpy_view), blocks, decoded.coordinates, run_seed=0, **window)
    assert factors_digest(server) == factors_digest(
        {k: torch.from_numpy(v) for k, v in numpy_view.items()}
    )
    # the rebuild points along the client's own update (an unbiased estimate of it)
    for name in start:
        moved, estimate = end[name] - start[name], server[name] - start[name]
        cosine = float((moved * estimate).sum() / (moved.norm() * estimate.norm()))
        assert cosine > 0.0, name


@pytest.mark.parametrize(
    "extra",
    [
        ["federation.strategy='fedit'"],
        ["federation.strategy='zo'"],
        ["client.quantization='nf4'"],
        ["client_groups=[{partitions=[1], backend='ort'}]"],
    ],
)
def test_module_weights_need_a_float_torch_ferret_run(extra):
    with pytest.raises(ConfigError) as error:
        load_scenario("simulations/default.toml", [*FERRET, *extra])
    assert error.value.key == "ferret.trainable_modules"


def test_a_module_name_the_model_lacks_is_a_config_error():
    scenario = load_scenario(
        "simulations/default.toml", [*FERRET, "ferret.trainable_modules=['nope']"]
    )
    model, _ = client_model(scenario, 0)
    with pytest.raises(ConfigError, match="'nope'") as error:
        check_trained_modules(model, scenario)
    assert error.value.key == "ferret.trainable_modules"
    check_trained_modules(model, load_scenario("simulations/default.toml", FERRET))  # no error


def test_a_run_of_module_weights_writes_them_under_the_bases_names(tmp_path):
    scenario = load_scenario("simulations/default.toml", FERRET)
    model, tokenizer = client_model(scenario, 0)
    weights = {"base_model.model.lm_head.base_layer.weight": torch.full((3, 2), 0.5)}
    path = write_outputs(model, weights, tokenizer, scenario, tmp_path, 2, "", final=True)
    assert path == tmp_path / "ferret_weights.safetensors"
    saved = load_file(path)
    assert list(saved) == ["lm_head.weight"]
    np.testing.assert_array_equal(saved["lm_head.weight"].numpy(), np.full((3, 2), 0.5))
    assert not (tmp_path / "adapter").exists()


def test_the_server_aggregates_module_weight_replies_and_a_node_replays_them():
    scenario = load_scenario("simulations/default.toml", FERRET)
    start = initial_state(client_model(scenario, 0)[0], MODULES)
    ferret, run_seed = FerretSection(pool_size=16), 5
    strategy = FerretStrategy(
        ferret=ferret,
        run_seed=run_seed,
        num_clients=4,
        robust=RobustSection(),
        min_available_nodes=1,
        min_train_nodes=1,
    )
    strategy.configure_train(1, factors_to_record(start), ConfigRecord(), Grid(range(1, 5)))
    blocks = state_blocks(start, ferret.block_size)
    replies = []
    for node in (1, 2, 3):
        gen = torch.Generator().manual_seed(node)
        end = {k: v - 1e-3 * torch.randn(v.shape, generator=gen) for k, v in start.items()}
        window = {"round": 1, "client": node - 1, "pool_size": ferret.pool_size}
        coords = client_coordinates(
            in_zo_order(start), in_zo_order(end), blocks, run_seed=run_seed, **window
        )
        pool_id = seed_pool_id(run_seed, 1, ferret.pool_size)
        payload = encode_ferret_reply(
            coords, pool_id=pool_id, round=1, client=node - 1, encoding=ferret.coord_encoding
        )
        replies.append(reply(node, {FERRET_REPLY_KEY: ConfigRecord({"coords": payload})}))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None  # every reply passed the server's checks on module weights
    new = record_to_factors(arrays)
    assert sorted(new) == sorted(start) and factors_digest(new) != factors_digest(start)
    node_view = {k: v.numpy().copy() for k, v in start.items()}  # a numpy node catching up
    replay_history_(in_zo_order(node_view), blocks, strategy.history, run_seed, ferret.server_lr)
    assert factors_digest({k: torch.from_numpy(v) for k, v in node_view.items()}) == (
        factors_digest(new)
    )
