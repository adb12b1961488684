"""The FedIT strategy's glue: replies in, validated average out (Flower messages built by hand)."""

import logging

import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from replies import Grid, array_reply

from fedft.flower_records import factors_to_record, record_to_factors
from server.strategies.fedit import FedIT

GLOBAL = {"m.lora_A.weight": torch.zeros(2, 3), "m.lora_B.weight": torch.zeros(3, 2)}
NODES = [1, 2, 3, 11, 12, 13, 14, 15, 21, 31]


def _reply(node, factors, examples=10.0):
    return array_reply(node, factors, examples, train_loss=1.0)


def _strategy(seen):
    strategy = FedIT(on_client=lambda r, u, b: seen.append((u.node_id, b)), min_available_nodes=1)
    strategy.configure_train(1, factors_to_record(GLOBAL), ConfigRecord(), Grid(NODES))
    return strategy


def test_bad_replies_are_dropped_and_named(caplog):
    good_a = {k: torch.full_like(v, 1.0) for k, v in GLOBAL.items()}
    good_b = {k: torch.full_like(v, 4.0) for k, v in GLOBAL.items()}
    nan = {k: torch.full_like(v, float("nan")) for k, v in GLOBAL.items()}
    wrong_shape = {"m.lora_A.weight": torch.ones(4, 3), "m.lora_B.weight": torch.ones(3, 4)}
    seen = []
    strategy = _strategy(seen)
    with caplog.at_level(logging.WARNING, logger="fedft.server"):
        arrays, _ = strategy.aggregate_train(
            1,
            [
                _reply(11, good_a, examples=30),
                _reply(12, nan),
                _reply(13, wrong_shape),
                _reply(14, good_b, examples=10),
                _reply(15, good_a, examples=None),  # no num-examples
            ],
        )
    out = record_to_factors(arrays)
    # p = (0.75, 0.25): 0.75 * 1 + 0.25 * 4 = 1.75
    assert torch.allclose(out["m.lora_A.weight"], torch.full((2, 3), 1.75))
    assert [node for node, _ in seen] == [11, 14]
    text = caplog.text
    for node, needle in [(12, "non-finite"), (13, "shape"), (15, "num-examples")]:
        assert f"node {node}" in text and needle in text
    assert "node 11" not in text and "node 14" not in text


def test_no_valid_reply_leaves_the_global_state_alone():
    strategy = _strategy([])
    bad = {k: torch.full_like(v, float("inf")) for k, v in GLOBAL.items()}
    arrays, _ = strategy.aggregate_train(1, [_reply(21, bad)])
    assert arrays is None  # Flower keeps the previous global arrays when None is returned


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_wrong_dtype_is_rejected(dtype, caplog):
    strategy = _strategy([])
    reply = {k: v.to(dtype) for k, v in GLOBAL.items()}
    with caplog.at_level(logging.WARNING, logger="fedft.server"):
        arrays, _ = strategy.aggregate_train(1, [_reply(31, reply)])
    assert arrays is None and "dtype" in caplog.text and "node 31" in caplog.text


def test_an_error_reply_names_the_node_the_instruction_went_to(caplog):
    from flwr.app import Error

    strategy = _strategy([])
    instruction = Message(RecordDict({"config": ConfigRecord()}), 7, MessageType.TRAIN)
    instruction.metadata.__dict__["_message_id"] = "m7"  # as the Grid sets when it pushes
    strategy.sent = [instruction]
    error = Message(Error(code=0, reason="NODE_UNAVAILABLE"), reply_to=instruction)
    error.metadata.__dict__["_src_node_id"] = 1  # error replies come from the SuperLink
    with caplog.at_level(logging.WARNING, logger="fedft.server"):
        arrays, _ = strategy.aggregate_train(1, [error])
    assert arrays is None
    assert "node 7 failed: NODE_UNAVAILABLE" in caplog.text and "node 1 " not in caplog.text


def test_the_scenario_text_goes_to_a_node_until_it_replies_and_again_after_an_error():
    from flwr.app import Error

    from fedft.config import Scenario
    from fedft.flower_records import SCENARIO_KEY, record_nbytes, scenario_to_config

    strategy = FedIT(min_available_nodes=1)
    config = scenario_to_config(Scenario.from_dict({}))
    arrays = factors_to_record(GLOBAL)

    def send(server_round):
        sent = strategy.configure_train(server_round, arrays, ConfigRecord(config), Grid(NODES))
        strategy.sent = list(sent)
        for k, m in enumerate(strategy.sent):
            m.metadata.__dict__["_message_id"] = f"{server_round}-{k}"
        return {m.metadata.dst_node_id: m for m in strategy.sent}

    def reply_ok(node, instruction):
        reply = _reply(node, {k: torch.full_like(v, 1.0) for k, v in GLOBAL.items()})
        reply.metadata.__dict__["_reply_to_message_id"] = instruction.metadata.message_id
        return reply

    def reply_error(instruction):
        error = Message(Error(code=0, reason="boom"), reply_to=instruction)
        error.metadata.__dict__["_src_node_id"] = 0  # error replies come from the SuperLink
        return error

    first = send(1)
    assert all(SCENARIO_KEY in m.content["config"] for m in first.values())
    text_bytes = len(config[SCENARIO_KEY]) + len(SCENARIO_KEY)
    assert strategy.bytes_down[1] >= record_nbytes(arrays) + text_bytes
    strategy.aggregate_train(1, [reply_ok(1, first[1]), reply_ok(2, first[2])])  # 3: no reply

    second = send(2)
    assert SCENARIO_KEY not in second[1].content["config"]  # it replied: it holds the text
    assert SCENARIO_KEY not in second[2].content["config"]
    assert SCENARIO_KEY in second[3].content["config"]  # no reply yet
    assert second[1].content["config"]["server-round"] == 2
    assert strategy.bytes_down[1] < record_nbytes(arrays) + 100 < strategy.bytes_down[3]
    strategy.aggregate_train(2, [reply_ok(1, second[1]), reply_error(second[2])])

    third = send(3)
    assert SCENARIO_KEY not in third[1].content["config"]
    assert SCENARIO_KEY in third[2].content["config"]  # its reply was an error: maybe restarted
