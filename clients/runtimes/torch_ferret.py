"""The ferret runtime: torch first-order training, the update sent as Ferret coordinates.

:class:`TorchFerret` is the runtime of ``client.backend = "ferret"``: a first-order node that
sends kilobytes up in a ``fedit`` or ``lora_fair`` round (the server rebuilds its factors from the
coordinates). In a ``ferret`` run every first-order node replies this way (``clients/app.py``);
in a ``zo`` run a ``ferret`` node steps as a ``torch`` one
(:class:`clients.runtimes.torch_zo.TorchZo`).

What trains is the LoRA factors (:class:`clients.runtimes.torch_lora.TorchLora`'s round), or, with
``ferret.trainable_modules`` set, every weight of those base modules (:func:`train_modules`,
Ferret's full-parameter setting): AdamW on those weights only, the LoRA factors frozen at their
initial (zero-update) values, the shared base given back untouched after the round.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from clients.ferret_client import FerretReply, ferret_reply
from clients.replies import FactorReply
from clients.runtimes import ClientRuntime, register_runtime
from clients.runtimes.torch_lora import TorchLora, client_datasets, client_model
from clients.runtimes.torch_zo import TorchZo
from fedft.config import Scenario
from fedft.devices import select_device
from fedft.evaluation import local_metrics
from fedft.schedule import round_lr
from fedft.task import batch_seed, federated_data
from fedft.train import train_local
from fedft.wire.order import zo_order
from fedft.zo.trainable import initial_state, set_trainable_, trainable_params, trainable_state

register_runtime("ferret", "zeroth_order")(TorchZo)  # a zo run takes any node: a torch device


def train_modules(
    scenario: Scenario,
    partition_id: int,
    start: Mapping[str, torch.Tensor],
    server_round: int,
) -> FactorReply:
    """The round's AdamW steps on the weights of ``scenario.trained_modules``, from ``start``.

    The same batches, learning rate and clipping as a LoRA round (:func:`fedft.train.train_local`
    trains the parameters that require a gradient: only those weights here). The reply's
    ``factors`` are the trained weights; the model (cached and shared by every client of the
    process) gets its initial weights and its ``requires_grad`` flags back.
    """
    modules = scenario.trained_modules
    model, tokenizer = client_model(scenario, partition_id)
    train_set, eval_set = client_datasets(scenario, partition_id)
    device = select_device(scenario.client_for(partition_id).device)
    initial_state(model, modules)  # captured before any round touches the shared model
    set_trainable_(model, start, modules)
    params = trainable_params(model, zo_order(start), modules)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    lr = round_lr(scenario.train, server_round, scenario.federation.num_rounds)
    try:
        model.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        seed = batch_seed(scenario, server_round, partition_id)
        started = time.perf_counter()
        result = train_local(model, train_set, scenario.train, seed, device, lr=lr)
        train_s = time.perf_counter() - started
        metrics = result.metrics(train_s)
        own = federated_data(scenario).client_eval[partition_id]  # personalisation
        metrics |= local_metrics(model, tokenizer, eval_set, own, scenario, server_round, device)
        end = trainable_state(model, modules)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        set_trainable_(model, initial_state(model, modules), modules)
    return FactorReply(end, metrics)


@register_runtime("ferret", "first_order")
class TorchFerret(ClientRuntime):
    """A first-order torch round (LoRA factors or module weights), projected (Ferret)."""

    def train_round(
        self,
        scenario: Scenario,
        partition_id: int,
        start: Mapping[str, torch.Tensor],
        server_round: int,
        node: int,
    ) -> FerretReply:
        """Train the round's local steps first-order from ``start``, reply with coordinates."""
        if scenario.trained_modules:
            trained = train_modules(scenario, partition_id, start, server_round)
        else:
            trained = TorchLora().train_round(scenario, partition_id, start, server_round, node)
        return ferret_reply(trained, scenario, start, server_round, node)
