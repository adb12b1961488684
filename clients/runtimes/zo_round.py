"""One zo client round as the server announced it, shared by the torch and ONNX Runtime runtimes.

Both runtimes take the same seeds (the round's pool, per-step indices derived from the client's
index), the same batches, and reply with the same message and metrics: only the forward pass
differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clients.replies import ZoReply
from fedft.config import Scenario
from fedft.factors import factors_digest
from fedft.task import batch_seed
from fedft.wire.zo_reply import encode_zo_reply
from fedft.zo.seeds import ZoRecord, derived_seed_indices, seed_pool, seed_pool_id


@dataclass(frozen=True)
class ZoRound:
    """A client's round: the seed pool, each local step's seed index, the batch order's seed."""

    scenario: Scenario
    client: int  # the node's index in the scenario: the input of the derived seed indices
    server_round: int
    pool: list[int]
    pool_id: int
    indices: list[int]
    batch_seed: int

    def step_indices(self) -> list[list[int]]:
        """Each local step's seed indices: ``zo.perturbations`` consecutive derived ones."""
        n = self.scenario.zo.perturbations
        return [self.indices[t : t + n] for t in range(0, len(self.indices), n)]


def plan_round(scenario: Scenario, partition_id: int, client: int, server_round: int) -> ZoRound:
    """Derive the round's seeds (no index travels on the wire: ``seed_choice = "derived"``).

    ``partition_id`` picks the data and batch order (0 for a device training on its own file);
    ``client`` is the node's index in the scenario (its ``partition-id`` node config), unique per
    node and stable across runs: the per-step seed indices derive from it.
    """
    zo, seed = scenario.zo, scenario.run.seed
    pool_id = seed_pool_id(seed, server_round, zo.pool_size)
    return ZoRound(
        scenario=scenario,
        client=client,
        server_round=server_round,
        pool=seed_pool(seed, server_round, zo.pool_size),
        pool_id=pool_id,
        indices=derived_seed_indices(pool_id, server_round, client, zo.max_records, zo.pool_size),
        batch_seed=batch_seed(scenario, server_round, partition_id),
    )


def reply(
    plan: ZoRound,
    records: Sequence[ZoRecord],
    losses: Sequence[float],
    start: Mapping[str, Any],
    end: Mapping[str, Any],
    num_examples: int,
    train_s: float,
) -> ZoReply:
    """The round's reply: the encoded ``fedft.v1.ZoReply``, ``end`` and the metrics (digests).

    ``start`` and ``end``: torch tensors, or numpy arrays (an ONNX Runtime node): same digests.
    """
    zo = plan.scenario.zo
    payload = encode_zo_reply(
        records,
        pool_id=plan.pool_id,
        round=plan.server_round,
        client=plan.client,
        pool_size=zo.pool_size,
        grad_encoding=zo.grad_encoding,
        seed_choice="derived",
        grad_scale=zo.grad_scale,
    )
    metrics = {
        "start_digest": float(factors_digest(start)),
        "end_digest": float(factors_digest(end)),
        "train_loss": sum(losses) / max(len(losses), 1),
        "num-examples": float(num_examples),
        "examples": float(num_examples),
        "steps": float(len(records)),
        "train_s": train_s,
    }
    return ZoReply(dict(end), metrics, payload)
