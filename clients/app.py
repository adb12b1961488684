"""fedft's Flower ClientApp: translate messages to and from the node's client runtime.

A train message becomes the round's start factors (:mod:`clients.zo_sync` in a zo run,
:mod:`clients.ferret_sync` in a ferret run), the node's runtime
(:func:`clients.runtimes.runtime_for`, by its backend) trains, and its reply
(:mod:`clients.replies`; in a ferret run projected by :func:`clients.ferret_client.ferret_reply`)
becomes the message content. Every node evaluates with torch, but an ``ort`` node with its
runtime's forward-only graph.

An ``ort`` node imports no torch (nor transformers, peft): the torch runtimes and the Ferret,
privacy and FLoRA glue are imported where a round needs them, and an ``ort`` node's factors are
numpy arrays from the record to the reply (``tests/unit/test_torch_free.py``). Ferret, ``[privacy]``
and FLoRA rounds still convert to torch tensors on it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Literal, cast

from flwr.app import Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.clientapp import ClientApp

from clients import warm, zo_sync
from clients.replies import FactorReply, Reply
from clients.runtimes import runtime_for
from fedft.config import Scenario
from fedft.console import quiet_flower_app
from fedft.flower_records import (
    MERGED_KEY,
    SCENARIO_DIGEST_KEY,
    ZO_SCALE_KEY,
    config_float,
    config_int,
    config_to_scenario,
    record_to_arrays,
    record_to_factors,
)

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[Scenario, int]:
    quiet_flower_app(context.run_config, logging.ERROR)  # unless `-c verbose=true`
    config = msg.content.config_records["config"]
    scenario = config_to_scenario(config, context.state)
    digest = str(config[SCENARIO_DIGEST_KEY])  # another run or configuration: caches emptied
    warm.enter(warm.device_key(digest, scenario, context.node_config))
    if ZO_SCALE_KEY in config:  # zo.grad_scale_rule = "adaptive": this round's int8 scale
        zo = scenario.zo.for_round(config_float(config, ZO_SCALE_KEY))
        scenario = dataclasses.replace(scenario, zo=zo)
    partition_id = int(context.node_config["partition-id"])
    if _backend(scenario, context, partition_id) != "ort":  # (ORT sets threads per session)
        import torch

        torch.set_num_threads(scenario.simulation.threads_per_client)
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


def _backend(scenario: Scenario, context: Context, partition_id: int) -> str:
    """The node's runtime: ``fedft client --backend`` (node config), else its client settings."""
    node_backend = str(context.node_config.get("backend", ""))
    return node_backend or scenario.client_for(partition_id).backend


def _torch_factors(reply: Reply) -> Reply:
    """``reply`` with torch tensors for factors (the Ferret and privacy glue computes in torch)."""
    import torch

    factors = {k: torch.as_tensor(v) for k, v in reply.factors.items()}
    return dataclasses.replace(reply, factors=factors)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the round on this node's partition with its runtime; reply with the update.

    The reply's ``app_s`` is the seconds spent in here (set-up, sync, training, local eval,
    encoding): beside the server's wall time it tells the client's work from Flower's and Ray's.
    """
    started = time.perf_counter()
    scenario, partition_id = _setup(msg, context)
    server_round = config_int(msg.content.config_records["config"], "server-round")
    node = int(context.node_config["partition-id"])  # unique per node, even on own data
    backend = _backend(scenario, context, partition_id)
    zo_run = scenario.federation.spec.shared_seeds
    ferret_run = scenario.federation.strategy == "ferret"
    merges_base = scenario.federation.spec.merges_base
    torch_glue = ferret_run or scenario.privacy.enabled or merges_base
    numpy = backend == "ort" and not torch_glue  # an ort node: no torch from record to reply
    if zo_run:  # the server sends what this node missed: history to replay, or factors
        start = zo_sync.synced_factors(scenario, context, msg, numpy=numpy)
    elif ferret_run:  # the same, with Ferret's aggregates (numpy maths on an ort device)
        from clients import ferret_sync

        start = ferret_sync.synced_factors(scenario, context, msg, numpy=backend == "ort")
    else:
        unpack = record_to_arrays if numpy else record_to_factors
        start = unpack(msg.content.array_records["arrays"])
    if ferret_run and scenario.trained_modules and backend == "torch":  # module weights
        backend = "ferret"  # (TorchLora trains LoRA factors only)
    if merges_base:  # FLoRA: the base holds the merged update
        from clients.runtimes import torch_lora
        from fedft.merged_base import merge_delta_

        model, _ = torch_lora.client_model(scenario, partition_id)
        merge_delta_(model, record_to_factors(msg.content.array_records[MERGED_KEY]))
    runtime = runtime_for(backend, zo_run)
    reply = runtime.train_round(scenario, partition_id, start, server_round, node)
    if torch_glue and backend == "ort":
        reply = _torch_factors(reply)
    if ferret_run:
        from clients.ferret_client import FerretReply, ferret_reply

        if not isinstance(reply, FerretReply):  # every first-order node projects
            reply = ferret_reply(reply, scenario, start, server_round, node, backend == "ort")
    if scenario.privacy.enabled and isinstance(reply, FactorReply):  # clipped on the device
        from clients.privacy import private_factors

        reply = private_factors(reply, scenario, start)
    content = reply.content(scenario, partition_id)
    metrics = cast(MetricRecord, content["metrics"])  # Reply.content's
    metrics["app_s"] = time.perf_counter() - started
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global LoRA factors on this node's eval split (an ort node: with ORT)."""
    scenario, partition_id = _setup(msg, context)
    arrays = msg.content.array_records["arrays"]
    if _backend(scenario, context, partition_id) == "ort":
        from clients.runtimes import ort_lora

        result = ort_lora.evaluate_round(scenario, partition_id, record_to_arrays(arrays))
    else:
        from clients.runtimes import torch_lora

        result = torch_lora.evaluate_round(scenario, partition_id, record_to_factors(arrays))
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
