"""The torch zeroth-order runtime: SPSA steps on the LoRA factors, replying with bytes.

:class:`TorchZo` is the runtime of ``client.backend = "zo"``, and of ``torch`` nodes in a zo run.

Forward passes only (MeZO), so memory stays at inference level and the base may be quantized.
Each local step ``t`` uses the seed ``pool[index_t]`` with ``index_t`` derived from (pool, round,
client index, t), so the reply carries one byte per step (``g`` at the run's fixed int8 scale)
plus a small header: see ``protos/fedft/v1/zo.proto``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from clients.privacy import zo_grad
from clients.replies import ZoReply
from clients.runtimes import ClientRuntime, register_runtime
from clients.runtimes.torch_lora import client_datasets, client_model
from clients.runtimes.zo_round import plan_round, reply
from fedft.config import Scenario
from fedft.devices import select_device
from fedft.wire.order import zo_order
from fedft.zo.seeds import ZoRecord
from fedft.zo.step import spsa_multi_step_
from fedft.zo.trainable import initial_state, set_trainable_, trainable_params, trainable_state


@register_runtime("zo", "zeroth_order")
@register_runtime("torch", "zeroth_order")
class TorchZo(ClientRuntime):
    """SPSA steps on the trainable tensors of the torch model (the base may be quantized)."""

    def train_round(
        self,
        scenario: Scenario,
        partition_id: int,
        start: Mapping[str, torch.Tensor],
        server_round: int,
        node: int,
    ) -> ZoReply:
        """Run ``zo.local_steps`` SPSA steps from ``start``.

        ``partition_id`` picks the data, ``node`` (its index in the scenario) the seeds: see
        :func:`clients.runtimes.zo_round.plan_round`. The reply's factors, the ones the client
        ends with, equal bit for bit what the server rebuilds from its records.
        """
        return _train_round_zo(scenario, partition_id, node, start, server_round)


def _train_round_zo(
    scenario: Scenario,
    partition_id: int,
    client: int,
    start_factors: Mapping[str, torch.Tensor],
    server_round: int,
) -> ZoReply:
    zo, settings = scenario.zo, scenario.client_for(partition_id)
    model, _ = client_model(scenario, partition_id)
    train_set, _ = client_datasets(scenario, partition_id)
    device = select_device(settings.device)
    model.to(device).eval()  # no dropout: L+ and L- must see the same function
    modules = zo.trainable_modules
    initial_state(model, modules)  # captured before any step touches the shared model
    set_trainable_(model, start_factors, modules)
    params = trainable_params(model, zo_order(start_factors), modules)
    plan = plan_round(scenario, partition_id, client, server_round)
    batches = train_set.batches(
        scenario.train.batch_size, seed=plan.batch_seed, steps=zo.local_steps
    )
    records: list[ZoRecord] = []
    losses: list[float] = []
    privatize = zo_grad(scenario, zo.grad_scale)  # [privacy]: clip (and noise) each g
    started = time.perf_counter()
    for indices, batch in zip(plan.step_indices(), batches, strict=True):
        batch = {k: v.to(device) for k, v in batch.items()}

        def loss_fn(batch: dict = batch) -> float:
            value = float(model(**batch).loss)
            losses.append(value)
            return value

        seeds = [plan.pool[i] for i in indices]
        grads = spsa_multi_step_(
            params,
            loss_fn,
            seeds,
            zo.eps,
            zo.lr,
            grad_scale=zo.grad_scale,
            rounding=zo.grad_rounding,
            privatize=privatize,
        )
        records.extend(ZoRecord(i, g) for i, g in zip(indices, grads, strict=True))
    train_s = time.perf_counter() - started
    end = trainable_state(model, modules)
    if modules:  # the base is shared by every client of this process: give it back untouched
        set_trainable_(model, initial_state(model, modules), modules)
    return reply(plan, records, losses, start_factors, end, len(train_set), train_s)
