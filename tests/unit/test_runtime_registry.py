"""Client runtimes are found by backend: the registry, the config's names and the replies agree."""

import pytest
import torch

from clients.replies import FactorReply, ZoReply
from clients.runtimes import load_runtimes, register_runtime, runtime_for
from clients.runtimes.ort_lora import OrtLora
from clients.runtimes.ort_zo import OrtZo
from clients.runtimes.torch_ferret import TorchFerret
from clients.runtimes.torch_lora import TorchLora
from clients.runtimes.torch_zo import TorchZo
from fedft.config import BACKENDS, Scenario
from fedft.errors import ConfigError
from fedft.flower_records import UPDATE_KEY, ZO_REPLY_KEY, record_to_factors
from fedft.wire.update import decode_update


def test_the_registered_backends_are_the_configurable_ones():
    assert sorted({backend for backend, _ in load_runtimes()}) == sorted(BACKENDS)


def test_every_backend_can_step_zeroth_order():  # a zo run takes any node
    runtimes = load_runtimes()
    assert all((backend, "zeroth_order") in runtimes for backend in BACKENDS)


@pytest.mark.parametrize(
    ("backend", "zo_run", "cls"),
    [
        ("torch", False, TorchLora),
        ("torch", True, TorchZo),
        ("ort", False, OrtLora),
        ("ort", True, OrtZo),
        ("zo", False, TorchZo),  # a zo device in a fedit run: its records are rebuilt
        ("zo", True, TorchZo),
        ("ferret", False, TorchFerret),  # first-order, replies with Ferret coordinates
        ("ferret", True, TorchZo),
    ],
)
def test_runtime_for_picks_the_backends_runtime_for_the_run(backend, zo_run, cls):
    assert type(runtime_for(backend, zo_run)) is cls


def test_an_unknown_backend_is_a_config_error_naming_the_key():
    with pytest.raises(
        ConfigError,
        match=r"`client.backend`: unknown backend 'tpu' \(known: ferret, ort, torch, zo\)",
    ):
        runtime_for("tpu", zo_run=False)


def test_a_pair_cannot_be_registered_twice():
    class Other(TorchLora):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register_runtime("torch", "first_order")(Other)


FACTORS = {"m.lora_A.weight": torch.randn(2, 3), "m.lora_B.weight": torch.randn(4, 2)}


@pytest.mark.parametrize("encoding", ["fp32_array", "fp32", "int8"])
def test_a_factor_reply_travels_as_the_run_encodes_updates(encoding):
    scenario = Scenario.from_dict({"federation": {"update_encoding": encoding}})
    content = FactorReply(FACTORS, {"steps": 3.0}).content(scenario, partition_id=2)
    assert dict(content["metrics"]) == {"steps": 3.0, "partition": 2.0}
    if encoding == "fp32_array":
        got = record_to_factors(content["arrays"])
    else:
        got = decode_update(bytes(content[UPDATE_KEY][UPDATE_KEY]), FACTORS)
    tolerance = 0.02 if encoding == "int8" else 0.0
    for name, tensor in FACTORS.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=tolerance)


def test_a_zo_reply_travels_as_its_payload():
    content = ZoReply(FACTORS, {"steps": 1.0}, b"\x01\x02").content(Scenario(), partition_id=0)
    assert bytes(content[ZO_REPLY_KEY]["records"]) == b"\x01\x02"
    assert set(content) == {ZO_REPLY_KEY, "metrics"}
