"""Cross-section checks of a scenario's LoRA ranks, FLoRA's clients and the optimisers.

:class:`fedft.config.Scenario` calls :func:`check_ranks` once it is built: the keys are
``client_groups.lora_rank``, ``federation.strategy`` (a strategy that merges into the base),
``server_opt.optimizer`` and ``fedprox.mu``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedft.schema import check
from fedft.strategies import STRATEGIES

if TYPE_CHECKING:
    from fedft.config import Scenario


def check_ranks(scenario: Scenario) -> None:
    """``client_groups.lora_rank``: at most ``lora.rank``, a strategy and backends that take it.

    A strategy that merges into the base (FLoRA) needs float torch clients. ``[server_opt]`` and
    ``[fedprox]`` act on LoRA factors that carry over between rounds: not in FLoRA (a fresh LoRA
    each round) or the shared-seed strategies.
    """
    spec = scenario.federation.spec
    if scenario.heterogeneous_ranks:
        check(
            not scenario.privacy.enabled,
            "client_groups.lora_rank",
            "per-client ranks and [privacy] do not combine yet (clipping is at one rank)",
        )
    if spec.frozen_a:
        check(
            scenario.federation.update_encoding != "int8",
            "federation.update_encoding",
            f"{spec.name!r} refuses a reply whose lora_A changed: int8 rows would change it",
        )
    moving = spec.merges_base or spec.shared_seeds or spec.name == "ferret"
    if scenario.server_opt.optimizer != "none":
        check(not moving, "server_opt.optimizer", f"does not apply to a {spec.name} run")
    if scenario.fedprox.mu > 0:
        check(not moving, "fedprox.mu", f"does not apply to a {spec.name} run")
    if scenario.federation.spec.merges_base:
        for pid in range(scenario.federation.num_clients):
            client = scenario.client_for(pid)
            check(
                client.backend == "torch" and client.quantization == "none",
                "federation.strategy",
                f"{scenario.federation.strategy!r} merges into the base weights: partition {pid} "
                "needs a torch client without quantization",
            )
    for group in scenario.client_groups:
        if group.lora_rank in (0, scenario.lora.rank):
            continue
        check(
            group.lora_rank < scenario.lora.rank,
            "client_groups.lora_rank",
            f"must be at most lora.rank ({scenario.lora.rank}), the server's rank, "
            f"got {group.lora_rank}",
        )
        spec = scenario.federation.spec
        check(
            spec.heterogeneous_ranks,
            "client_groups.lora_rank",
            f"strategy {spec.name!r} needs one rank; per-client ranks work with "
            + ", ".join(n for n, other in STRATEGIES.items() if other.heterogeneous_ranks),
        )
        for pid in group.partitions:
            check(
                scenario.client_for(pid).backend == "torch",
                "client_groups.lora_rank",
                f"partition {pid}: another rank needs a torch client (not zo, ort or ferret)",
            )
