"""The torch runtime: first-order LoRA training of the scenario's model on one partition.

:class:`TorchLora` is ``client.backend = "torch"``'s runtime in first-order runs. The model and the
datasets here (:func:`client_model`, :func:`client_datasets`) are shared with the torch zo runtime
(:mod:`clients.runtimes.torch_zo`) and with every node's evaluation (:func:`evaluate_round`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Mapping

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from clients.replies import FactorReply
from clients.runtimes import ClientRuntime, register_runtime
from fedft.adapters import get_factors, set_factors_
from fedft.algorithms.hetero_lora import truncate_state
from fedft.config import Scenario
from fedft.data import EncodedDataset
from fedft.devices import select_device
from fedft.evaluation import local_metrics
from fedft.models import load_peft_model
from fedft.quantize import base_weight_bytes
from fedft.schedule import round_lr
from fedft.task import batch_seed, encode_partition, federated_data
from fedft.train import EvalResult, evaluate, train_local


def client_model(
    scenario: Scenario, partition_id: int
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The partition's base plus LoRA, quantized and placed as its client settings say.

    Built once per process for each (quantization, device) pair: see
    :func:`fedft.models.load_peft_model`.
    """
    client = scenario.client_for(partition_id)
    lora = scenario.lora_for(partition_id)  # its own rank (client_groups.lora_rank)
    return load_peft_model(
        scenario.model, lora, scenario.run.seed, client.quantization, client.device
    )


def freeze_a_(model: PeftModel, frozen: bool) -> None:
    """Make every ``lora_A`` trainable or not (FFA-LoRA trains ``lora_B`` only).

    Set every round: the model is shared by every run a process serves.
    """
    for name, param in model.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(not frozen)


@contextlib.contextmanager
def proximal_term(model: PeftModel, mu: float) -> Iterator[None]:
    """FedProx (Li et al., MLSys 2020, arXiv 1812.06127): train on ``loss + mu/2 ||w - w_t||^2``.

    ``w_t`` are the trainable factors as the round starts. The term's gradient ``mu (w - w_t)`` is
    added to each trainable factor's gradient by a tensor hook during the round (``train_loss``
    stays the task loss); ``mu = 0`` adds nothing and registers nothing.
    """
    if mu <= 0:
        yield
        return
    handles = []
    for param in model.parameters():
        if param.requires_grad:
            start = param.detach().clone()
            handles.append(
                param.register_hook(lambda g, p=param, w0=start: g + mu * (p.detach() - w0))
            )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@functools.cache
def client_datasets(scenario: Scenario, partition_id: int) -> tuple[EncodedDataset, EncodedDataset]:
    """The partition's encoded train and eval sets, built once per process."""
    _, tokenizer = client_model(scenario, partition_id)
    return encode_partition(scenario, partition_id, tokenizer)


@register_runtime("torch", "first_order")
class TorchLora(ClientRuntime):
    """AdamW steps on the LoRA factors of a peft model (its base quantized or not)."""

    def train_round(
        self,
        scenario: Scenario,
        partition_id: int,
        start: Mapping[str, torch.Tensor],
        server_round: int,
        node: int,
    ) -> FactorReply:
        """Start from the global factors, train the round's local steps, reply with the new ones.

        The optimizer is fresh each round (FedIT): only the factors carry over.
        """
        model, tokenizer = client_model(scenario, partition_id)
        train_set, eval_set = client_datasets(scenario, partition_id)
        device = select_device(scenario.client_for(partition_id).device)
        set_factors_(model, start)
        freeze_a_(model, scenario.federation.spec.frozen_a)
        seed = batch_seed(scenario, server_round, partition_id)
        lr = round_lr(scenario.train, server_round, scenario.federation.num_rounds)
        started = time.perf_counter()
        with proximal_term(model, scenario.fedprox.mu):
            result = train_local(model, train_set, scenario.train, seed, device, lr=lr)
        train_s = time.perf_counter() - started
        metrics = result.metrics(train_s)
        metrics["base_bytes"] = float(base_weight_bytes(model))  # what the quantization saves
        if scenario.train.lr_schedule != "constant":
            metrics["lr"] = lr
        own = federated_data(scenario).client_eval[partition_id]  # personalisation
        metrics |= local_metrics(model, tokenizer, eval_set, own, scenario, server_round, device)
        return FactorReply(get_factors(model), metrics)


def evaluate_round(
    scenario: Scenario, partition_id: int, global_factors: Mapping[str, torch.Tensor]
) -> EvalResult:
    """Evaluate the global factors on the partition's eval split."""
    model, _ = client_model(scenario, partition_id)
    _, eval_set = client_datasets(scenario, partition_id)
    rank = scenario.rank_for(partition_id)
    if rank != scenario.lora.rank:  # it holds the leading components only
        global_factors = truncate_state(global_factors, rank)
    set_factors_(model, global_factors)
    return evaluate(
        model,
        eval_set,
        scenario.train.batch_size * 4,
        select_device(scenario.client_for(partition_id).device),
    )
