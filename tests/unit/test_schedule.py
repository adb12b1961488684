"""The learning rate across rounds: FlowerTune's cosine, and that it reaches the runtimes."""

import math

import pytest
import torch

from fedft.adapters import get_factors
from fedft.config import Scenario, TrainConfig
from fedft.errors import ConfigError
from fedft.schedule import cosine_annealing, round_lr


def test_cosine_annealing_closed_form():
    lr, lr_min, rounds = 3e-3, 1e-4, 5
    for t in range(rounds + 1):
        want = lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * t / rounds))
        assert cosine_annealing(t, rounds, lr, lr_min) == pytest.approx(want, rel=1e-15)
    assert cosine_annealing(0, rounds, lr, lr_min) == pytest.approx(lr)
    assert cosine_annealing(rounds, rounds, lr, lr_min) == pytest.approx(lr_min)
    assert cosine_annealing(2, 4, 1.0, 0.0) == pytest.approx(0.5)  # half way: the mean
    # FlowerTune calls it with Flower's server round (1 first): round 1 is already below lr
    assert cosine_annealing(1, 4, 1.0, 0.0) == pytest.approx((1 + math.sqrt(0.5)) / 2)


def test_constant_is_the_default_and_ignores_the_round():
    train = TrainConfig()
    assert train.lr_schedule == "constant" and train.lr_min == 0.0
    assert [round_lr(train, r, 3) for r in (1, 2, 3)] == [train.lr] * 3
    cosine = TrainConfig(lr=1e-3, lr_schedule="cosine", lr_min=1e-5)
    assert round_lr(cosine, 3, 3) == pytest.approx(1e-5)
    assert round_lr(cosine, 1, 3) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * 1.5)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"train": {"lr_schedule": "linear"}}, "train.lr_schedule"),
        ({"train": {"lr": 1e-3, "lr_min": 1e-2}}, "train.lr_min"),
        ({"train": {"lr_min": -1.0}}, "train.lr_min"),
        ({"run": {"save_every": -1}}, "run.save_every"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Scenario.from_dict(override)


def small_scenario(**train):
    return Scenario.from_dict(
        {
            "lora": {"rank": 2, "target_modules": ["q_proj", "v_proj"]},
            "federation": {"num_clients": 2, "num_rounds": 2},
            "data": {"num_examples": 60},
            "partition": {"method": "iid"},
            "train": {"local_steps": 3, "batch_size": 4, **train},
        }
    )


def test_the_round_lr_reaches_the_torch_runtime():
    """Round 2 of 2 under cosine with lr_min = 0 trains at lr 0: the factors do not move."""
    from clients.runtimes.torch_lora import TorchLora, client_model

    def train_round(sc, partition_id, start, server_round):
        reply = TorchLora().train_round(sc, partition_id, start, server_round, node=partition_id)
        return reply.factors, reply.metrics

    sc = small_scenario(lr_schedule="cosine", lr=1e-2, lr_min=0.0)
    model, _ = client_model(sc, 0)
    start = {k: v + 0.01 * torch.randn_like(v) for k, v in get_factors(model).items()}
    last, metrics = train_round(sc, 0, start, server_round=2)
    assert metrics["lr"] == 0.0
    assert all(torch.equal(last[k], v) for k, v in start.items())
    first, metrics = train_round(sc, 0, start, server_round=1)
    assert metrics["lr"] == pytest.approx(0.5e-2)  # cos(pi / 2) = 0
    assert not all(torch.equal(first[k], v) for k, v in start.items())
    # exactly what a constant run at that lr does
    const = small_scenario(lr=metrics["lr"])
    again, const_metrics = train_round(const, 0, start, server_round=1)
    assert "lr" not in const_metrics  # a constant run's metrics are as before
    assert all(torch.equal(again[k], v) for k, v in first.items())


@pytest.mark.integration
def test_the_round_lr_reaches_the_ort_runtime(tmp_path, monkeypatch):
    from clients.runtimes import ort_lora
    from clients.runtimes.ort_lora import OrtLora
    from fedft.edge.cache import ensure_bundle

    def train_round(sc, partition_id, start, server_round):
        reply = OrtLora().train_round(sc, partition_id, start, server_round, node=partition_id)
        return reply.factors, reply.metrics

    sc = small_scenario(lr_schedule="cosine", lr=1e-2, lr_min=0.0)
    monkeypatch.setenv(ort_lora.BUNDLE_ENV, str(ensure_bundle(sc, tmp_path / "bundle").path))
    ort_lora.edge_bundle.cache_clear()
    ort_lora.client_datasets.cache_clear()
    from clients.runtimes.torch_lora import client_model

    model, _ = client_model(sc, 0)
    start = {k: v + 0.01 * torch.randn_like(v) for k, v in get_factors(model).items()}
    last, metrics = train_round(sc, 0, start, server_round=2)
    assert metrics["lr"] == 0.0
    assert all(torch.equal(torch.from_numpy(last[k]), v) for k, v in start.items())  # numpy
    first, metrics = train_round(sc, 0, start, server_round=1)
    assert metrics["lr"] == pytest.approx(0.5e-2)
    assert not all(torch.equal(torch.from_numpy(first[k]), v) for k, v in start.items())
    ort_lora.edge_bundle.cache_clear()
    ort_lora.client_datasets.cache_clear()


def test_model_card_states_the_schedule():
    from fedft.model_card import model_card

    sc = small_scenario(lr_schedule="cosine", lr=1e-2, lr_min=1e-4)
    card = model_card(sc, "base_model", 1, None)
    assert "annealed (cosine, FlowerTune) to 0.0001 in round 2; 0.00505 in round 1" in card
    assert "lr 0.003 (constant)" in model_card(small_scenario(), "base_model", 1, None)
