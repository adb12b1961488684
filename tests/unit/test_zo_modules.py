"""Zeroth-order on all weights of chosen modules: client step, server rebuild, config checks."""

import pytest
import torch
from safetensors.torch import load_file

from clients.runtimes.torch_lora import client_model
from clients.runtimes.torch_zo import TorchZo
from fedft.config import load_scenario
from fedft.errors import ConfigError
from fedft.wire.zo_reply import decode_zo_reply
from fedft.zo.replay import rebuild_factors
from fedft.zo.trainable import initial_state, save_module_weights

ZO = [
    "federation.strategy='zo'",
    "federation.num_clients=2",
    "partition.method='iid'",
    "zo.local_steps=6",
    "zo.trainable_modules=['lm_head']",
]


def test_module_weights_step_and_rebuild_exactly(tmp_path):
    scenario = load_scenario("simulations/default.toml", ZO)
    model, _ = client_model(scenario, 0)
    start = initial_state(model, ["lm_head"])
    assert list(start) == ["base_model.model.lm_head.base_layer.weight"]
    zo_reply = TorchZo().train_round(scenario, 0, start, server_round=1, node=77)
    payload, end = zo_reply.payload, zo_reply.factors
    reply = decode_zo_reply(payload, scenario.zo.pool_size, scenario.zo.local_steps)
    assert len(payload) <= 6 + 64 and len(reply.records) == 6
    rebuilt = rebuild_factors(start, reply.records, scenario.zo, scenario.run.seed, 1)
    name = next(iter(start))
    assert not torch.equal(end[name], start[name])  # the step moved the head
    assert torch.equal(rebuilt[name], end[name])  # the server's rebuild is bit-exact
    # the shared base is given back untouched, and its initial state is remembered
    live = dict(model.named_parameters())[name]
    assert torch.equal(live.detach(), start[name])
    assert torch.equal(initial_state(model, ["lm_head"])[name], start[name])
    saved = load_file(save_module_weights(end, tmp_path / "w.safetensors"))
    assert list(saved) == ["lm_head.weight"] and torch.equal(saved["lm_head.weight"], end[name])


@pytest.mark.parametrize(
    "extra",
    [
        ["federation.strategy='fedit'"],
        ["client.quantization='nf4'"],
        ["client_groups=[{partitions=[1], backend='ort'}]"],
    ],
)
def test_module_weights_need_a_float_torch_zo_run(extra):
    with pytest.raises(ConfigError, match="zo.trainable_modules"):
        load_scenario("simulations/default.toml", [*ZO, *extra])
