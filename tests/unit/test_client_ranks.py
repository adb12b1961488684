"""`client_groups.lora_rank`: which ranks, strategies and backends a scenario may mix."""

import pytest

from fedft.config import load_scenario
from fedft.errors import ConfigError
from fedft.strategies import STRATEGIES


def scenario(*overrides, groups="[{partitions=[0, 1], lora_rank=4}]"):
    return load_scenario(None, [f"client_groups={groups}", "lora.rank=8", *overrides])


def test_a_group_trains_its_rank_at_the_servers_scale():
    s = scenario()
    assert s.heterogeneous_ranks
    assert [s.rank_for(p) for p in range(s.federation.num_clients)][:3] == [4, 4, 8]
    small = s.lora_for(0)
    assert small.rank == 4 and small.alpha / small.rank == s.lora.alpha / s.lora.rank
    assert s.lora_for(2) is s.lora


def test_the_servers_rank_in_a_group_is_not_heterogeneous():
    assert not scenario(groups="[{partitions=[0], lora_rank=8}]").heterogeneous_ranks


@pytest.mark.parametrize(
    ("overrides", "groups", "message"),
    [
        ((), "[{partitions=[0], lora_rank=16}]", "must be at most lora.rank (8)"),
        ((), "[{partitions=[0], lora_rank=-1}]", "must be >= 0"),
        (("federation.strategy='zo'",), None, "strategy 'zo' needs one rank"),
        (("federation.strategy='ferret'",), None, "strategy 'ferret' needs one rank"),
        ((), "[{partitions=[0], lora_rank=4, backend='ort'}]", "needs a torch client"),
        ((), "[{partitions=[0], lora_rank=4, backend='zo'}]", "needs a torch client"),
    ],
)
def test_what_cannot_mix_ranks_is_refused_naming_the_key(overrides, groups, message):
    with pytest.raises(ConfigError, match="client_groups.lora_rank") as err:
        scenario(*overrides, groups=groups or "[{partitions=[0], lora_rank=4}]")
    assert message in str(err.value)


def test_the_strategies_that_take_per_client_ranks():
    takers = {name for name, spec in STRATEGIES.items() if spec.heterogeneous_ranks}
    assert takers == {"fedit", "lora_fair", "flexlora", "ffa_lora", "flora"}
    assert [name for name, spec in STRATEGIES.items() if spec.frozen_a] == ["ffa_lora"]


def test_flora_needs_float_torch_clients():
    with pytest.raises(ConfigError, match="federation.strategy") as err:
        load_scenario(
            None,
            [
                "federation.strategy='flora'",
                "client_groups=[{partitions=[2], quantization='int8'}]",
            ],
        )
    assert "partition 2 needs a torch client without quantization" in str(err.value)


def test_ffa_lora_refuses_an_encoding_that_would_change_the_frozen_a():
    with pytest.raises(ConfigError, match="federation.update_encoding"):
        load_scenario(None, ["federation.strategy='ffa_lora'", "federation.update_encoding='int8'"])
