"""fedft's Flower ClientApp: translate messages to and from the client runtime."""

from __future__ import annotations

import dataclasses

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import ort_client, ort_zo, torch_client, zo_client, zo_sync
from fedft.config import Scenario
from fedft.flower_records import (
    UPDATE_KEY,
    ZO_REPLY_KEY,
    config_to_scenario,
    factors_to_record,
    record_to_factors,
)
from fedft.wire.update import encode_update

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[Scenario, int]:
    scenario = config_to_scenario(msg.content["config"], context.state)
    torch.set_num_threads(scenario.simulation.threads_per_client)
    partition_id = int(context.node_config["partition-id"])
    data_path = str(context.node_config.get("data-path", ""))  # `fedft client --data FILE`
    if data_path:
        return own_data_scenario(scenario, partition_id, data_path), 0
    return scenario, partition_id


def own_data_scenario(scenario: Scenario, partition_id: int, data_path: str) -> Scenario:
    """The scenario as seen by a device that trains on its own file instead of a partition.

    The device's file (JSON Lines or CSV, by suffix, read with the scenario's field names) is its
    whole federation of one: a slice is held out for evaluation as usual, the rest is its training
    data. Model, LoRA, training and zo settings are the server's; client settings are this
    partition's.
    """
    source = "csv" if data_path.lower().endswith(".csv") else "jsonl"
    return dataclasses.replace(
        scenario,
        data=dataclasses.replace(scenario.data, source=source, path=data_path, max_examples=0),
        partition=dataclasses.replace(scenario.partition, method="iid"),
        federation=dataclasses.replace(
            scenario.federation, num_clients=1, min_train_clients=1, fraction_train=1.0
        ),
        client=scenario.client_for(partition_id),
        client_groups=(),
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global LoRA factors on this node's partition and reply with the new ones."""
    scenario, partition_id = _setup(msg, context)
    server_round = int(msg.content["config"]["server-round"])
    node_backend = str(context.node_config.get("backend", ""))  # `fedft client --backend`
    backend = node_backend or scenario.client_for(partition_id).backend
    if scenario.federation.strategy == "zo" or backend == "zo":
        if scenario.federation.strategy == "zo":
            start = zo_sync.synced_factors(scenario, context, msg)
        else:
            start = record_to_factors(msg.content["arrays"])
        # An `ort` device in a zo run steps forward-only with ONNX Runtime (same generator, same
        # records); `zo` and `torch` clients step with torch.
        zo_runtime = ort_zo if backend == "ort" else zo_client
        client = int(context.node_config["partition-id"])  # unique per node, even on own data
        payload, _, metrics = zo_runtime.train_round_zo(
            scenario, partition_id, client, start, server_round
        )
        metrics["partition"] = float(partition_id)
        zo_reply = ConfigRecord({"records": payload})
        content = RecordDict({ZO_REPLY_KEY: zo_reply, "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)
    factors = record_to_factors(msg.content["arrays"])
    runtime = ort_client if backend == "ort" else torch_client
    new_factors, metrics = runtime.train_round(scenario, partition_id, factors, server_round)
    metrics["partition"] = float(partition_id)
    encoding = scenario.federation.update_encoding
    if encoding == "fp32_array":
        content = RecordDict({"arrays": factors_to_record(new_factors)})
    else:  # a fedft.v1.LoraUpdate message (fp32, or int8 with one scale per row)
        update = ConfigRecord({UPDATE_KEY: encode_update(new_factors, encoding)})
        content = RecordDict({UPDATE_KEY: update})
    content["metrics"] = MetricRecord(metrics)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global LoRA factors on this node's eval split."""
    scenario, partition_id = _setup(msg, context)
    result = torch_client.evaluate_round(
        scenario, partition_id, record_to_factors(msg.content["arrays"])
    )
    metrics = {
        "eval_loss": result.loss,
        "accuracy": result.accuracy,
        "num-examples": float(max(result.examples, 1)),
    }
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
