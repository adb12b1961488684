"""A worker process loads the base model once, whichever and however many clients it serves."""

from clients.runtimes.torch_lora import client_model
from fedft.config import load_scenario
from fedft.models import load_peft_model


def test_a_thousand_client_scenario_builds_one_model_per_process():
    scenario = load_scenario(
        None, ["federation.num_clients=1000", "partition.method='iid'", "data.num_examples=3000"]
    )
    load_peft_model.cache_clear()
    models = {id(client_model(scenario, pid)[0]) for pid in range(0, 1000, 37)}
    assert len(models) == 1
    assert load_peft_model.cache_info().misses == 1
