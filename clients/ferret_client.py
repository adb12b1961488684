"""Ferret on the client: a first-order round's update, sent as coordinates along shared directions.

Any first-order runtime trains the round (:class:`clients.runtimes.torch_lora.TorchLora`, on a
float or quantized base, or :class:`clients.runtimes.ort_lora.OrtLora`, ONNX Runtime training);
:func:`ferret_reply` projects its update ``Delta = start - end`` block by block onto the round's
shared directions (:func:`fedft.ferret.aggregate.client_coordinates`) and sends it as a
``fedft.v1.FerretReply``. With ``[privacy]`` the update is clipped before it is projected and the
coordinates are bounded (and noised in local mode) on the device (:mod:`fedft.privacy.ferret`).
The client's own end state is not kept: every party applies the round's
aggregate instead (:mod:`clients.ferret_sync`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, RecordDict

from clients.privacy import private_ferret_coordinates
from clients.replies import Reply
from fedft.config import Scenario
from fedft.factors import factors_digest
from fedft.ferret.aggregate import client_coordinates
from fedft.ferret.blocks import state_blocks
from fedft.flower_records import FERRET_REPLY_KEY
from fedft.privacy import mechanisms
from fedft.privacy.ferret import private_counts
from fedft.wire.ferret import encode_ferret_reply
from fedft.wire.order import in_zo_order
from fedft.zo.seeds import seed_pool_id


@dataclass(frozen=True)
class FerretReply(Reply):
    """Ferret coordinates; ``factors`` are the client's trained ones (not sent)."""

    payload: bytes  # the encoded fedft.v1.FerretReply

    def update(self, scenario: Scenario) -> RecordDict:
        """``{"ferret": {"coords": <fedft.v1.FerretReply bytes>}}``."""
        return RecordDict({FERRET_REPLY_KEY: ConfigRecord({"coords": self.payload})})


def ferret_reply(
    trained: Reply,
    scenario: Scenario,
    start: Mapping[str, torch.Tensor],
    server_round: int,
    node: int,
    numpy: bool = False,
) -> FerretReply:
    """Project a first-order round (``start`` -> ``trained.factors``) into a Ferret reply.

    ``node`` (the node's index in the scenario) sets the seed windows of its blocks. ``numpy``
    projects on numpy arrays (an ONNX Runtime node): the same coordinates, bit for bit.
    """
    ferret = scenario.ferret
    started = time.perf_counter()
    end = {name: trained.factors[name].detach().to("cpu", torch.float32) for name in start}
    privacy = scenario.privacy
    if privacy.enabled:  # clip X_k - X (A and B together) to C before projecting
        delta, _ = mechanisms.clip_update(mechanisms.update_of(end, start), privacy.clip_norm)
        end = {
            k: t.to("cpu", torch.float32) for k, t in mechanisms.apply_update(start, delta).items()
        }
    blocks = state_blocks(start, ferret.block_size)
    first: dict[str, Any] = dict(start)
    last: dict[str, Any] = end
    if numpy:
        first = {name: t.detach().cpu().numpy() for name, t in start.items()}
        last = {name: t.numpy() for name, t in end.items()}
    coordinates = client_coordinates(
        in_zo_order(first),
        in_zo_order(last),
        blocks,
        run_seed=scenario.run.seed,
        round=server_round,
        client=node,
        pool_size=ferret.pool_size,
        counts=private_counts(len(blocks), ferret.pool_size) if privacy.enabled else None,
    )
    if privacy.enabled:  # the released scaled coordinates: clipped to C, noised in local mode
        coordinates = private_ferret_coordinates(coordinates, [b.size for b in blocks], scenario)
    payload = encode_ferret_reply(
        coordinates,
        pool_id=seed_pool_id(scenario.run.seed, server_round, ferret.pool_size),
        round=server_round,
        client=node,
        encoding=ferret.coord_encoding,
    )
    metrics = {
        **trained.metrics,
        "project_s": time.perf_counter() - started,
        "coords": float(sum(coordinates.counts)),
        "start_digest": float(factors_digest(start)),
        "ferret_numpy": float(numpy),
    }
    return FerretReply(factors=trained.factors, metrics=metrics, payload=payload)
