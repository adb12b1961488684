"""Strategies are found by name: the registry, the config's names and the built strategies agree."""

import pytest

from fedft.config import Scenario
from fedft.errors import ConfigError
from fedft.strategies import STRATEGIES
from server.federation import build_strategy
from server.strategies import strategy_class
from server.strategies.fedit import FedIT
from server.strategies.lora_fair import LoraFair
from server.strategies.zo import ZoStrategy


def test_every_configurable_strategy_is_registered_and_nothing_else():
    strategy_class("fedit")  # imports every strategy module
    from server.strategies import STRATEGIES as REGISTERED

    assert sorted(REGISTERED) == sorted(STRATEGIES)
    assert all(spec.name == name for name, spec in STRATEGIES.items())


def test_a_zo_run_is_known_by_its_capability():
    zo = Scenario.from_dict({"federation": {"strategy": "zo"}, "zo": {"trainable_modules": ["x"]}})
    assert zo.federation.spec.shared_seeds and zo.trained_modules == ("x",)
    fedit = Scenario.from_dict({"federation": {"strategy": "fedit"}})
    assert not fedit.federation.spec.shared_seeds and fedit.trained_modules == ()


@pytest.mark.parametrize(
    ("name", "cls"), [("fedit", FedIT), ("lora_fair", LoraFair), ("zo", ZoStrategy)]
)
def test_build_strategy_picks_the_registered_class(name, cls):
    scenario = Scenario.from_dict({"federation": {"strategy": name}})
    strategy = build_strategy(scenario, lambda *args: None)
    assert type(strategy) is cls
    if name == "lora_fair":
        assert strategy.solver.steps == scenario.lora_fair.steps


def test_an_unknown_name_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"`federation.strategy`: unknown strategy 'fedavgm'"):
        strategy_class("fedavgm")
