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
from clients.zo_round import plan_round, reply
from fedft.config import Scenario
from fedft.edge.bundle import FORWARD_MODEL
from fedft.edge.ort_zo import ort_spsa_steps


def train_round_zo(
    scenario: Scenario,
    partition_id: int,
    client: int,
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
    plan = plan_round(scenario, partition_id, client, server_round)
    batches = (
        {k: v.numpy() for k, v in batch.items()}
        for batch in train_set.batches(
            scenario.train.batch_size, seed=plan.batch_seed, steps=zo.local_steps
        )
    )
    started = time.perf_counter()
    records, losses = ort_spsa_steps(
        model,
        factors,
        batches,
        plan.pool,
        plan.indices,
        eps=zo.eps,
        lr=zo.lr,
        grad_scale=zo.grad_scale,
    )
    train_s = time.perf_counter() - started
    end_factors = {name: torch.from_numpy(a) for name, a in factors.items()}
    payload, metrics = reply(
        plan, records, losses, start_factors, end_factors, len(train_set), train_s
    )
    return payload, end_factors, metrics
