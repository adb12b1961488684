"""The zeroth-order client runtime: SPSA steps on the LoRA factors, replying with bytes.

Forward passes only (MeZO), so memory stays at inference level and the base may be quantized.
Each local step ``t`` uses the seed ``pool[index_t]`` with ``index_t`` derived from (pool, round,
node, t), so the reply carries one byte per step (``g`` at the run's fixed int8 scale) plus a
small header: see ``protos/fedft/v1/zo.proto``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from clients.torch_client import client_datasets, client_model
from fedft.adapters import factors_digest
from fedft.algorithms.zo import (
    ZoRecord,
    derived_seed_indices,
    seed_pool,
    seed_pool_id,
    spsa_step_,
)
from fedft.config import Scenario
from fedft.train import select_device
from fedft.trainable import initial_state, set_trainable_, trainable_params, trainable_state
from fedft.zo_wire import encode_zo_reply


def zo_layout(factors: Mapping[str, torch.Tensor]) -> list[str]:
    """The canonical order of the perturbed tensors: factor names sorted."""
    return sorted(factors)


def train_round_zo(
    scenario: Scenario,
    partition_id: int,
    node_id: int,
    start_factors: Mapping[str, torch.Tensor],
    server_round: int,
) -> tuple[bytes, dict[str, torch.Tensor], dict[str, float]]:
    """Run ``zo.local_steps`` SPSA steps from ``start_factors``.

    Returns
    -------
    tuple[bytes, dict[str, torch.Tensor], dict[str, float]]
        The encoded ``fedft.v1.ZoReply``, the factors the client ends with (equal, bit for bit,
        to what the server rebuilds from the reply), and the round's metrics.
    """
    zo, client = scenario.zo, scenario.client_for(partition_id)
    model, _ = client_model(scenario, partition_id)
    train_set, _ = client_datasets(scenario, partition_id)
    device = select_device(client.device)
    model.to(device).eval()  # no dropout: L+ and L- must see the same function
    modules = zo.trainable_modules
    initial_state(model, modules)  # captured before any step touches the shared model
    set_trainable_(model, start_factors, modules)
    params = trainable_params(model, zo_layout(start_factors), modules)
    pool = seed_pool(scenario.run.seed, server_round, zo.pool_size)
    pool_id = seed_pool_id(scenario.run.seed, server_round, zo.pool_size)
    indices = derived_seed_indices(pool_id, server_round, node_id, zo.local_steps, zo.pool_size)
    batch_seed = scenario.run.seed * 1_000_003 + server_round * 1_009 + partition_id
    batches = train_set.batches(scenario.train.batch_size, seed=batch_seed, steps=zo.local_steps)
    records, losses = [], []
    started = time.perf_counter()
    for index, batch in zip(indices, batches, strict=True):
        batch = {k: v.to(device) for k, v in batch.items()}

        def loss_fn(batch: dict = batch) -> float:
            value = float(model(**batch).loss)
            losses.append(value)
            return value

        grad = spsa_step_(params, loss_fn, pool[index], zo.eps, zo.lr, grad_scale=zo.grad_scale)
        records.append(ZoRecord(index, grad))
    train_s = time.perf_counter() - started
    payload = encode_zo_reply(
        records,
        pool_id=pool_id,
        round=server_round,
        node_id=node_id,
        pool_size=zo.pool_size,
        grad_encoding=zo.grad_encoding,
        seed_choice="derived",
        grad_scale=zo.grad_scale,
    )
    metrics = {
        "start_digest": float(factors_digest(start_factors)),
        "end_digest": float(factors_digest(trainable_state(model, modules))),
        "train_loss": sum(losses) / max(len(losses), 1),
        "num-examples": float(len(train_set)),
        "examples": float(len(train_set)),
        "steps": float(len(records)),
        "train_s": train_s,
    }
    return payload, trainable_state(model, modules), metrics
