"""Scenario delivery: the text once per node, then its digest, the node keeping the text."""

import pytest
from flwr.app import ConfigRecord, RecordDict

from fedft.config import Scenario
from fedft.errors import ReplyError
from fedft.flower_records import (
    SCENARIO_DIGEST_KEY,
    SCENARIO_KEY,
    config_to_scenario,
    scenario_to_config,
    without_scenario,
)


def _scenario(rounds: int = 3) -> Scenario:
    return Scenario.from_dict({"federation": {"num_rounds": rounds}})


def test_a_node_keeps_the_text_and_later_needs_only_the_digest():
    scenario, state = _scenario(), RecordDict()
    config = scenario_to_config(scenario)
    assert config_to_scenario(config, state) == scenario
    short = without_scenario(config)
    assert SCENARIO_KEY not in short and short[SCENARIO_DIGEST_KEY] == config[SCENARIO_DIGEST_KEY]
    assert short.count_bytes() < config.count_bytes() - 1000
    assert config_to_scenario(short, state) == scenario


def test_a_node_without_the_text_or_with_another_scenario_refuses_the_digest():
    config = without_scenario(scenario_to_config(_scenario()))
    with pytest.raises(ReplyError, match="does not hold scenario"):
        config_to_scenario(config, RecordDict())  # a restarted node: its state is empty
    state = RecordDict()
    config_to_scenario(scenario_to_config(_scenario(rounds=5)), state)
    with pytest.raises(ReplyError, match=str(config[SCENARIO_DIGEST_KEY])):
        config_to_scenario(config, state)


def test_a_text_that_does_not_match_its_digest_is_refused_and_not_kept():
    config = scenario_to_config(_scenario())
    other = scenario_to_config(_scenario(rounds=5))
    forged = ConfigRecord({SCENARIO_KEY: other[SCENARIO_KEY], **without_scenario(config)})
    state = RecordDict()
    with pytest.raises(ReplyError, match="does not match its digest"):
        config_to_scenario(forged, state)
    assert SCENARIO_KEY not in state.config_records
    with pytest.raises(ReplyError, match=SCENARIO_DIGEST_KEY):
        config_to_scenario(ConfigRecord({SCENARIO_KEY: config[SCENARIO_KEY]}), state)
