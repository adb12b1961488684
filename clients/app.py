"""fedft's Flower ClientApp: translate messages to and from the node's client runtime.

A train message becomes the round's start factors (:mod:`clients.zo_sync` in a zo run,
:mod:`clients.ferret_sync` in a ferret run), the node's runtime
(:func:`clients.runtimes.runtime_for`, by its backend) trains, and its reply
(:mod:`clients.replies`; in a ferret run projected by :func:`clients.ferret_client.ferret_reply`)
becomes the message content. Every node evaluates with torch.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import torch
from flwr.app import Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.clientapp import ClientApp

from clients import ferret_sync, zo_sync
from clients.ferret_client import FerretReply, ferret_reply
from clients.privacy import private_factors
from clients.replies import FactorReply
from clients.runtimes import runtime_for, torch_lora
from fedft.config import Scenario
from fedft.console import quiet_flower_app
from fedft.flower_records import (
    MERGED_KEY,
    ZO_SCALE_KEY,
    config_float,
    config_int,
    config_to_scenario,
    record_to_factors,
)
from fedft.merged_base import merge_delta_

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[Scenario, int]:
    quiet_flower_app(context.run_config, logging.ERROR)  # unless `-c verbose=true`
    config = msg.content.config_records["config"]
    scenario = config_to_scenario(config, context.state)
    if ZO_SCALE_KEY in config:  # zo.grad_scale_rule = "adaptive": this round's int8 scale
        zo = scenario.zo.for_round(config_float(config, ZO_SCALE_KEY))
        scenario = dataclasses.replace(scenario, zo=zo)
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
    source: Literal["csv", "jsonl"] = "csv" if data_path.lower().endswith(".csv") else "jsonl"
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
    """Train the round on this node's partition with its runtime; reply with the update."""
    scenario, partition_id = _setup(msg, context)
    server_round = config_int(msg.content.config_records["config"], "server-round")
    node = int(context.node_config["partition-id"])  # unique per node, even on own data
    node_backend = str(context.node_config.get("backend", ""))  # `fedft client --backend`
    backend = node_backend or scenario.client_for(partition_id).backend
    zo_run = scenario.federation.spec.shared_seeds
    ferret_run = scenario.federation.strategy == "ferret"
    if zo_run:  # the server sends what this node missed: history to replay, or factors
        start = zo_sync.synced_factors(scenario, context, msg)
    elif ferret_run:  # the same, with Ferret's aggregates (numpy maths on an ort device)
        start = ferret_sync.synced_factors(scenario, context, msg, numpy=backend == "ort")
    else:
        start = record_to_factors(msg.content.array_records["arrays"])
    if ferret_run and scenario.trained_modules and backend == "torch":  # module weights
        backend = "ferret"  # (TorchLora trains LoRA factors only)
    if scenario.federation.spec.merges_base:  # FLoRA: the base holds the merged update
        model, _ = torch_lora.client_model(scenario, partition_id)
        merge_delta_(model, record_to_factors(msg.content.array_records[MERGED_KEY]))
    runtime = runtime_for(backend, zo_run)
    reply = runtime.train_round(scenario, partition_id, start, server_round, node)
    if ferret_run and not isinstance(reply, FerretReply):  # every first-order node projects
        reply = ferret_reply(reply, scenario, start, server_round, node, numpy=backend == "ort")
    if scenario.privacy.enabled and isinstance(reply, FactorReply):  # clipped on the device
        reply = private_factors(reply, scenario, start)
    return Message(content=reply.content(scenario, partition_id), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global LoRA factors on this node's eval split."""
    scenario, partition_id = _setup(msg, context)
    result = torch_lora.evaluate_round(
        scenario, partition_id, record_to_factors(msg.content.array_records["arrays"])
    )
    metrics: dict[str, MetricRecordValues] = {
        "eval_loss": result.loss,
        "accuracy": result.accuracy,
        "num-examples": float(max(result.examples, 1)),
    }
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query("partition")
def partition(msg: Message, context: Context) -> Message:
    """Reply with the node's partition id, by which the server samples a round (paired runs)."""
    metrics = MetricRecord({"partition-id": int(context.node_config["partition-id"])})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
