"""The zeroth-order client on ONNX Runtime: SPSA steps with a plain ``InferenceSession``.

:func:`train_round_zo` has the signature and reply of :func:`clients.zo_client.train_round_zo`
(same pool, derived seed indices, batches and ``fedft.v1.ZoReply``), but runs the bundle's
forward-only graph with the LoRA factors as inputs: no torch model, no training runtime. Its records
equal the torch client's up to float32 rounding of the losses (``tests/unit/test_ort_parity.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import torch

from clients.ort_client import client_datasets, edge_bundle, forward_model
from fedft.adapters import factors_digest
from fedft.algorithms.zo import derived_seed_indices, seed_pool, seed_pool_id
from fedft.config import Scenario
from fedft.edge.bundle import FORWARD_MODEL
from fedft.edge.ort_zo import ort_spsa_steps
from fedft.zo_wire import encode_zo_reply


def train_round_zo(
    scenario: Scenario,
    partition_id: int,
    node_id: int,
    start_factors: Mapping[str, torch.Tensor],
    server_round: int,
) -> tuple[bytes, dict[str, torch.Tensor], dict[str, float]]:
    """Run ``zo.local_steps`` SPSA steps from ``start_factors`` on ONNX Runtime.

    Returns
    -------
    tuple[bytes, dict[str, torch.Tensor], dict[str, float]]
        The encoded ``fedft.v1.ZoReply``, the factors the client ends with, and the metrics of
        :func:`clients.zo_client.train_round_zo`.
    """
    zo = scenario.zo
    bundle = edge_bundle(scenario)
    model = forward_model(bundle.file(FORWARD_MODEL), scenario.simulation.threads_per_client)
    train_set, _ = client_datasets(scenario, partition_id)
    factors = {
        k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in start_factors.items()
    }
    pool = seed_pool(scenario.run.seed, server_round, zo.pool_size)
    pool_id = seed_pool_id(scenario.run.seed, server_round, zo.pool_size)
    indices = derived_seed_indices(pool_id, server_round, node_id, zo.local_steps, zo.pool_size)
    batch_seed = scenario.run.seed * 1_000_003 + server_round * 1_009 + partition_id
    batches = (
        {k: v.numpy() for k, v in batch.items()}
        for batch in train_set.batches(
            scenario.train.batch_size, seed=batch_seed, steps=zo.local_steps
        )
    )
    started = time.perf_counter()
    records, losses = ort_spsa_steps(
        model, factors, batches, pool, indices, eps=zo.eps, lr=zo.lr, grad_scale=zo.grad_scale
    )
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
    end_factors = {name: torch.from_numpy(a) for name, a in factors.items()}
    metrics = {
        "start_digest": float(factors_digest(start_factors)),
        "end_digest": float(factors_digest(end_factors)),
        "train_loss": sum(losses) / max(len(losses), 1),
        "num-examples": float(len(train_set)),
        "examples": float(len(train_set)),
        "steps": float(len(records)),
        "train_s": train_s,
    }
    return payload, end_factors, metrics
