"""The ort runtime: LoRA training of the scenario's model with ONNX Runtime's training API.

:class:`OrtLora` is ``client.backend = "ort"``'s runtime in first-order runs: the same round as
:mod:`clients.runtimes.torch_lora` (same batches, same AdamW and clipping, same reply)
on an edge bundle instead of a torch model. The bundle is the folder named by the environment
variable ``FEDFT_EDGE_BUNDLE`` (a device given one by ``fedft edge export``; it must match the run's
configuration), else the cache folder of the configuration, built on first use (simulations).
Data are encoded with the bundle's own tokenizer: no torch model is loaded here, and nothing
here imports torch (factors and batches are numpy arrays; a tensor the app passes in is read as
one): a device with numpy, onnxruntime-training, tokenizers and flwr runs it
(``pip install fedft[device]``, docs/deploy.md).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clients.replies import FactorReply
from clients.runtimes import ClientRuntime, register_runtime
from fedft.config import Scenario
from fedft.data import EncodedDataset
from fedft.edge.bundle import FORWARD_MODEL, TOKENIZER, EdgeBundle, open_bundle
from fedft.edge.ort_train import train_steps
from fedft.edge.ort_zo import ForwardModel, evaluate_forward
from fedft.edge.tokenizer import load_tokenizer
from fedft.eval_result import EvalResult
from fedft.schedule import round_lr
from fedft.task import batch_seed, encode_partition

BUNDLE_ENV = "FEDFT_EDGE_BUNDLE"


@functools.cache
def edge_bundle(scenario: Scenario) -> EdgeBundle:
    """The run's edge bundle: ``$FEDFT_EDGE_BUNDLE`` (checked), else the cache (built if missing).

    Raises
    ------
    fedft.edge.errors.BundleMismatchError
        If the bundle was built for another model, LoRA or optimizer configuration.
    """
    folder = os.environ.get(BUNDLE_ENV)
    if folder:
        return open_bundle(folder, scenario)
    from fedft.edge.cache import ensure_bundle  # builds with torch: not on a device given one

    return ensure_bundle(scenario)


@functools.cache
def forward_model(path: Path, threads: int) -> ForwardModel:
    """The forward-only session of a bundle, created once per process."""
    return ForwardModel(path, threads)


@functools.cache
def client_datasets(scenario: Scenario, partition_id: int) -> tuple[EncodedDataset, EncodedDataset]:
    """The partition's encoded train and eval sets (the bundle's tokenizer), once per process.

    int64 numpy arrays, the values torch clients encode.
    """
    tokenizer = load_tokenizer(edge_bundle(scenario).file(TOKENIZER))
    return encode_partition(scenario, partition_id, tokenizer, numpy=True)


def numpy_factors(factors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """float32 numpy copies of factors given as numpy arrays or (CPU or not) torch tensors."""
    out = {}
    for name, value in factors.items():
        if not isinstance(value, np.ndarray):  # a torch tensor: its float32 values on the CPU
            value = value.detach().cpu().float().numpy()
        out[name] = np.array(value, dtype=np.float32)
    return out


@register_runtime("ort", "first_order")
class OrtLora(ClientRuntime):
    """LoRA training with ONNX Runtime's training API on the run's edge bundle."""

    def train_round(
        self,
        scenario: Scenario,
        partition_id: int,
        start: Mapping[str, Any],
        server_round: int,
        node: int,
    ) -> FactorReply:
        """Start from the global factors, train the round's local steps, reply with the new ones.

        Mirrors :class:`clients.runtimes.torch_lora.TorchLora`: the same batches (same seed), the
        same metrics; ``train_s`` includes the round's session setup (a fresh optimizer state each
        round).
        """
        bundle = edge_bundle(scenario)
        train_set, eval_set = client_datasets(scenario, partition_id)
        cfg, threads = scenario.train, scenario.simulation.threads_per_client
        seed = batch_seed(scenario, server_round, partition_id)  # as torch's
        batches = train_set.batches(cfg.batch_size, seed=seed, steps=cfg.local_steps)
        lr = round_lr(cfg, server_round, scenario.federation.num_rounds)  # as torch's
        started = time.perf_counter()
        result = train_steps(bundle, numpy_factors(start), batches, lr, threads)
        train_s = time.perf_counter() - started
        steps = len(result.losses)
        metrics = {
            "train_loss": sum(result.losses) / max(steps, 1),
            "num-examples": float(len(train_set)),
            "examples": float(len(train_set)),
            "steps": float(steps),
            "train_s": train_s,
            "base_bytes": float(bundle.manifest["base_bytes"]),
        }
        if cfg.lr_schedule != "constant":
            metrics["lr"] = lr
        if len(eval_set):
            model = forward_model(bundle.file(FORWARD_MODEL), threads)
            local = evaluate_forward(model, result.factors, eval_set, cfg.batch_size * 4)
            metrics["local_eval_loss"] = local.loss
        return FactorReply(result.factors, metrics)


def evaluate_round(
    scenario: Scenario, partition_id: int, global_factors: Mapping[str, Any]
) -> EvalResult:
    """Evaluate the global factors on the partition's eval split (forward-only graph)."""
    bundle = edge_bundle(scenario)
    _, eval_set = client_datasets(scenario, partition_id)
    model = forward_model(bundle.file(FORWARD_MODEL), scenario.simulation.threads_per_client)
    return evaluate_forward(
        model, numpy_factors(global_factors), eval_set, scenario.train.batch_size * 4
    )
