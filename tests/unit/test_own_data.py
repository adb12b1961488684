"""A device that brings its own data file trains on it with the server's settings."""

from pathlib import Path

import pytest

from clients.app import own_data_scenario
from fedft.config import load_scenario
from fedft.data import DataError, read_jsonl
from fedft.task import federated_data

DATA = Path(__file__).resolve().parents[1] / "data" / "tiny_instructions.jsonl"


def test_device_file_becomes_a_federation_of_one():
    server = load_scenario(
        "simulations/default.toml", ["client_groups=[{partitions=[3], quantization='int8'}]"]
    )
    device = own_data_scenario(server, 3, str(DATA))
    assert device.data.source == "jsonl" and device.data.path == str(DATA)
    assert device.lora == server.lora and device.train == server.train and device.zo == server.zo
    assert device.client_for(0).quantization == "int8"  # this partition's client settings
    split = federated_data(device)
    seen = list(split.global_eval) + list(split.client_train[0]) + list(split.client_eval[0])
    assert sorted(e.prompt for e in seen) == sorted(e.prompt for e in read_jsonl(DATA))


def test_missing_device_file_is_named(tmp_path):
    device = own_data_scenario(load_scenario(None), 0, str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="nope.jsonl"):
        federated_data(device)
