"""The ferret runtime: torch first-order LoRA training, the update sent as Ferret coordinates.

:class:`TorchFerret` is the runtime of ``client.backend = "ferret"``: a first-order node that
sends kilobytes up in a ``fedit`` or ``lora_fair`` round (the server rebuilds its factors from the
coordinates). In a ``ferret`` run every first-order node replies this way (``clients/app.py``);
in a ``zo`` run a ``ferret`` node steps as a ``torch`` one
(:class:`clients.runtimes.torch_zo.TorchZo`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from clients.ferret_client import FerretReply, ferret_reply
from clients.runtimes import ClientRuntime, register_runtime
from clients.runtimes.torch_lora import TorchLora
from clients.runtimes.torch_zo import TorchZo
from fedft.config import Scenario

register_runtime("ferret", "zeroth_order")(TorchZo)  # a zo run takes any node: a torch device


@register_runtime("ferret", "first_order")
class TorchFerret(ClientRuntime):
    """:class:`clients.runtimes.torch_lora.TorchLora`'s round, projected (Ferret)."""

    def train_round(
        self,
        scenario: Scenario,
        partition_id: int,
        start: Mapping[str, torch.Tensor],
        server_round: int,
        node: int,
    ) -> FerretReply:
        """Train the round's local steps first-order from ``start``, reply with coordinates."""
        trained = TorchLora().train_round(scenario, partition_id, start, server_round, node)
        return ferret_reply(trained, scenario, start, server_round, node)
