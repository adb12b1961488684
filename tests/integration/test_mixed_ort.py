"""A real Flower simulation mixing ONNX Runtime (ort) and torch clients in one federation."""

import pytest

from fedft.config import load_scenario
from fedft.edge.bundle import bundle_config, bundle_key, read_bundle

pytestmark = pytest.mark.integration
ORT_PARTITIONS = (0, 1)  # as tests/integration/conftest.py's mixed_run groups them


@pytest.fixture(scope="module")
def run(mixed_run):  # tests/integration/conftest.py: ort, nf4, int8 and float32 clients
    return mixed_run


def test_every_reply_accepted_each_round(run):
    out, _, stderr, rows = run
    assert "dropped reply" not in stderr, stderr[-3000:]
    scenario = load_scenario(out / "config.toml")
    assert scenario.client_for(0).backend == "ort" and scenario.client_for(2).backend == "torch"
    rounds = [r for r in rows if r["kind"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["clients"] == 5 for r in rounds[1:])
    clients = [r for r in rows if r["kind"] == "client"]
    for server_round in (1, 2):
        replies = {int(c["partition"]): c for c in clients if c["round"] == server_round}
        assert sorted(replies) == [0, 1, 2, 3, 4]
        for pid, reply in replies.items():
            assert reply["steps"] == 20 and reply["train_loss"] > 0, pid
            config_bytes = reply["bytes_down"] - reply["bytes_up"]  # factors: same as sent
            assert (config_bytes > 1000) if server_round == 1 else (0 < config_bytes < 100), pid


def test_global_eval_loss_fell(run):
    rounds = [r for r in run[3] if r["kind"] == "round"]
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"] - 0.5


def test_ort_clients_trained_on_their_bundle(run):
    out, cache, _, rows = run
    scenario = load_scenario(out / "config.toml")
    folders = list((cache / "edge").iterdir())
    folders = [f for f in folders if f.is_dir() and not f.name.startswith(".")]
    assert len(folders) == 1  # built once, though two client processes needed it
    bundle = read_bundle(folders[0])
    assert bundle.key == bundle_key(bundle_config(scenario))
    ort_rows = [r for r in rows if r["kind"] == "client" and r["partition"] in ORT_PARTITIONS]
    assert len(ort_rows) == 4 and all("local_eval_loss" in r for r in ort_rows)
