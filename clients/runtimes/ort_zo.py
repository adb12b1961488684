"""The ONNX Runtime zeroth-order runtime: SPSA steps with a plain ``InferenceSession``.

:class:`OrtZo` is the runtime of ``ort`` nodes in a zo run. It replies as
:class:`clients.runtimes.torch_zo.TorchZo` (same pool, derived seed indices, batches and
``fedft.v1.ZoReply``), but runs the bundle's
forward-only graph with the LoRA factors as inputs: no torch model, no training runtime. Its records
equal the torch client's up to float32 rounding of the losses (``tests/unit/test_ort_parity.py``).
With ``zo.sparse_fraction > 0`` it perturbs the run's sparse mask instead, written into the base
weights the graph takes as inputs (:mod:`fedft.edge.ort_sparse`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from clients.replies import ZoReply
from clients.runtimes import ClientRuntime, register_runtime
from clients.runtimes.ort_lora import client_datasets, edge_bundle, forward_model, numpy_factors
from clients.runtimes.zo_round import plan_round, reply
from fedft.config import Scenario
from fedft.edge.bundle import FORWARD_MODEL
from fedft.edge.ort_sparse import SparseForward
from fedft.edge.ort_zo import ForwardGraph, ort_spsa_steps


@register_runtime("ort", "zeroth_order")
class OrtZo(ClientRuntime):
    """SPSA steps on the LoRA factors, fed as inputs to the bundle's forward-only graph."""

    def train_round(
        self,
        scenario: Scenario,
        partition_id: int,
        start: Mapping[str, Any],
        server_round: int,
        node: int,
    ) -> ZoReply:
        """Run ``zo.local_steps`` SPSA steps from ``start`` on ONNX Runtime.

        The reply's metrics are :class:`~clients.runtimes.torch_zo.TorchZo`'s.
        """
        return _train_round_zo(scenario, partition_id, node, start, server_round)


def _privatize(scenario: Scenario) -> Callable[[float], float] | None:
    """:func:`clients.privacy.zo_grad` (torch), imported only when ``[privacy]`` is on."""
    if not scenario.privacy.enabled:
        return None
    from clients.privacy import zo_grad

    return zo_grad(scenario, scenario.zo.grad_scale)


_SPARSE: list[SparseForward] = []  # the one run's masked graph (its weights copied once)


def _sparse_forward(scenario: Scenario, partition_id: int) -> SparseForward:
    """The bundle's graph with the node's sparse mask (:func:`clients.zo_sync.ort_mask`).

    Reused while it wraps the very graph :func:`forward_model` returns (a warm device clears that
    cache when its bundle changes: :mod:`clients.warm`) and the same mask.
    """
    from clients.zo_sync import node_mask

    bundle, mask = edge_bundle(scenario), node_mask(partition_id)
    path = bundle.file(FORWARD_MODEL)
    model = forward_model(path, scenario.simulation.threads_per_client)
    if not (_SPARSE and _SPARSE[0].model is model and _SPARSE[0].mask.digest() == mask.digest()):
        _SPARSE[:] = [SparseForward(model, path, mask, bundle.initial_factors())]
    return _SPARSE[0]


def _train_round_zo(
    scenario: Scenario,
    partition_id: int,
    client: int,
    start_factors: Mapping[str, Any],
    server_round: int,
) -> ZoReply:
    zo = scenario.zo
    bundle = edge_bundle(scenario)
    model: ForwardGraph = forward_model(
        bundle.file(FORWARD_MODEL), scenario.simulation.threads_per_client
    )
    if zo.sparse:  # the mask's deltas on the base weights, not the LoRA factors
        model = _sparse_forward(scenario, partition_id)
    train_set, _ = client_datasets(scenario, partition_id)
    factors = numpy_factors(start_factors)  # copies: start stays the round's start
    plan = plan_round(scenario, partition_id, client, server_round)
    batches = train_set.batches(
        scenario.train.batch_size, seed=plan.batch_seed, steps=zo.local_steps
    )
    started = time.perf_counter()
    records, losses = ort_spsa_steps(
        model,
        factors,
        batches,
        plan.pool,
        plan.step_indices(),
        eps=zo.eps,
        lr=zo.lr,
        grad_scale=zo.grad_scale,
        rounding=zo.grad_rounding,
        privatize=_privatize(scenario),  # [privacy]: clip (and noise) each g
    )
    train_s = time.perf_counter() - started
    return reply(plan, records, losses, start_factors, factors, len(train_set), train_s)
