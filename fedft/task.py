"""The federated task of a scenario: examples, global eval set, and each client's split.

Every process (server, each client) derives the same splits from the scenario and its seed, so
nothing but the scenario has to travel: a client loads its own partition by index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedft import partition
from fedft.config import DataConfig, Scenario
from fedft.data import EncodedDataset, Example, encode_examples
from fedft.data.sources import DATA_SOURCES
from fedft.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class FederatedData:
    """A global evaluation set plus, per client, its train and eval examples."""

    global_eval: tuple[Example, ...]
    client_train: tuple[tuple[Example, ...], ...]
    client_eval: tuple[tuple[Example, ...], ...]


def load_examples(data: DataConfig, seed: int) -> list[Example]:
    """The scenario's examples before any split: its source's (``fedft.data.sources``), sampled.

    ``data.max_examples`` > 0 keeps that many, drawn with the run's seed, in their source order.
    """
    examples = DATA_SOURCES[data.source](data, seed)
    if data.max_examples:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.permutation(len(examples))[: data.max_examples])
        examples = [examples[i] for i in keep]
    return examples


def split_clients(scenario: Scenario, examples: list[Example]) -> FederatedData:
    """Hold out the global eval set, partition the rest, and split each client train/eval."""
    data, fed, seed = scenario.data, scenario.federation, scenario.run.seed
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    n_global = data.global_eval_count(len(examples))
    if n_global == 0 or len(examples) - n_global < fed.num_clients:
        raise ConfigError(
            "federation.num_clients",
            f"{fed.num_clients} clients but only {len(examples)} examples "
            f"({n_global} held out for the global eval set)",
        )
    global_eval = [examples[i] for i in order[:n_global]]
    rest = [examples[i] for i in order[n_global:]]
    keys = [ex.key for ex in rest]
    method = scenario.partition.method
    try:
        parts = partition.PARTITIONERS[method](keys, fed.num_clients, seed, scenario.partition)
    except partition.PartitionError as err:
        raise ConfigError(f"partition.method={method}", str(err)) from None
    train, evals = [], []
    for client, idx in enumerate(parts):
        tr, ev = partition.train_eval_split(idx, data.eval_fraction, seed + client)
        train.append(tuple(rest[i] for i in tr))
        evals.append(tuple(rest[i] for i in ev))
    return FederatedData(tuple(global_eval), tuple(train), tuple(evals))


def batch_seed(scenario: Scenario, server_round: int, partition_id: int) -> int:
    """Seed of a client's batch order in a round: the same whatever the client's runtime."""
    return scenario.run.seed * 1_000_003 + server_round * 1_009 + partition_id


def encode_partition(
    scenario: Scenario,
    partition_id: int,
    tokenizer: PreTrainedTokenizerBase,
    numpy: bool = False,
) -> tuple[EncodedDataset, EncodedDataset]:
    """A client's train and eval examples as token tensors (any runtime, its own tokenizer).

    ``numpy``: as int64 numpy arrays (a device without torch), the same values.
    """
    data, cfg = federated_data(scenario), scenario.data
    if not 0 <= partition_id < len(data.client_train):
        raise ConfigError(
            "partition-id",
            f"{partition_id} is outside [0, {len(data.client_train)}) of the scenario's clients",
        )

    def encode(examples: tuple[Example, ...]) -> EncodedDataset:
        return encode_examples(
            list(examples),
            tokenizer,
            cfg.max_length,
            template=cfg.template,
            chat=cfg.chat,
            numpy=numpy,
        )

    return encode(data.client_train[partition_id]), encode(data.client_eval[partition_id])


@functools.cache
def federated_data(scenario: Scenario) -> FederatedData:
    """The scenario's splits, computed once per process."""
    return split_clients(scenario, load_examples(scenario.data, scenario.run.seed))
