"""The aggregation strategies as the library knows them: each one's name and capabilities.

``federation.strategy`` takes one of :data:`STRATEGIES`' names, and ``server/strategies/``
registers one Flower class under each (``tests/unit/test_strategy_registry.py`` checks that the
registry's names are exactly these: adding a strategy is its file there plus its entry here).
What the rest of fedft needs to know of a strategy is a capability below, never a comparison with
its name.

- ``fedit``: weighted average of A and B separately (FedIT, arXiv 2305.05644);
- ``lora_fair``: FedIT's averages with B corrected towards ``sum_k p_k B_k A_k`` (LoRA-FAIR,
  arXiv 2411.14961), settings in ``[lora_fair]``;
- ``flexlora``: ``sum_k p_k B_k A_k`` as a truncated SVD at the server's rank, a client of rank
  ``r_k`` gets its leading ``r_k`` components (FlexLoRA, arXiv 2402.11505);
- ``flora``: the clients' factors stacked (exactly ``sum_k p_k B_k A_k``) and merged into the
  base weights; every round starts a fresh LoRA (FLoRA, arXiv 2409.05976);
- ``ffa_lora``: ``A`` frozen at its seeded initial value, ``B`` averaged, which is exact
  (FFA-LoRA, arXiv 2403.12313);
- ``zo``: clients' ``g`` summed per shared seed and replayed onto the global state (FedKSeed-style
  zeroth order), settings in ``[zo]``;
- ``ferret``: clients' first-order updates as coordinates on shared-seed directions, summed per
  slot and applied to the global factors (Ferret, arXiv 2409.06277), settings in ``[ferret]``.
"""

from __future__ import annotations

from dataclasses import dataclass

COORDINATE_WISE = ("median", "trimmed_mean")  # robust aggregators that replace the strategy's own
SELECTING = ("krum", "multi_krum")  # robust aggregators that only pick the replies to aggregate
MODULE_WEIGHT_FILES = (
    "zo_weights.safetensors",
    "ferret_weights.safetensors",
    "zo_sparse.safetensors",
)
"""A run that trains module weights (``<settings>.trainable_modules``) writes
``<settings>_weights.safetensors`` instead of an adapter: the weights under the base's names; a
sparse zo run (``zo.sparse_fraction``) writes its mask's deltas, ``zo_sparse.safetensors``."""


@dataclass(frozen=True)
class StrategySpec:
    """What one strategy is, as the config, the outputs and the model card need it.

    Attributes
    ----------
    name : str
        The value of ``federation.strategy``.
    aggregate : str
        One line: what the server computes from the replies.
    shared_seeds : bool
        The global state is the base replayed with the per-seed sums of clients' zo scalars:
        clients send ``(seed index, g)`` records, never factors, and such a run may train whole
        module weights (``zo.trainable_modules``) instead of LoRA factors.
    aggregators : tuple[str, ...]
        The ``robust.aggregator`` values it composes with (``mean`` is its own aggregate).
    settings : str
        The scenario table holding its own settings (``""``: none).
    heterogeneous_ranks : bool
        Clients may train other ranks than ``lora.rank`` (``client_groups.lora_rank``): each one
        is sent the leading components of the global factors at its rank, its reply is checked
        at that rank and zero-padded to the server's before it is aggregated.
    frozen_a : bool
        Clients keep every ``lora_A`` as sent (FFA-LoRA) and train ``lora_B`` only; a reply whose
        ``lora_A`` changed is refused.
    merges_base : bool
        Between rounds the aggregate is merged into the base weights and every client trains a
        fresh LoRA (FLoRA): train messages carry the merged factors, which clients add to their
        (float, torch) base.
    """

    name: str
    aggregate: str
    shared_seeds: bool
    aggregators: tuple[str, ...]
    settings: str = ""
    heterogeneous_ranks: bool = False
    frozen_a: bool = False
    merges_base: bool = False


STRATEGIES: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec(
            "fedit",
            "weighted average of A and B separately (FedIT)",
            shared_seeds=False,
            aggregators=("mean", *COORDINATE_WISE, *SELECTING),
            heterogeneous_ranks=True,  # zero-padded factors: HetLoRA's naive baseline
        ),
        StrategySpec(
            "lora_fair",
            "FedIT's averages with B corrected towards sum_k p_k B_k A_k (LoRA-FAIR)",
            shared_seeds=False,
            aggregators=("mean", *SELECTING),  # its target is the weighted mean of B_k A_k
            settings="lora_fair",
            heterogeneous_ranks=True,  # zero-padded, then corrected towards the exact update
        ),
        StrategySpec(
            "flexlora",
            "truncated SVD of sum_k p_k B_k A_k at the server's rank; clients their own (FlexLoRA)",
            shared_seeds=False,
            aggregators=("mean", *SELECTING),  # its target is the weighted mean of B_k A_k
            heterogeneous_ranks=True,
        ),
        StrategySpec(
            "flora",
            "clients' factors stacked, merged into the base; clients start a fresh LoRA (FLoRA)",
            shared_seeds=False,
            aggregators=("mean", *SELECTING),  # the stack is exact: sum_k p_k B_k A_k
            heterogeneous_ranks=True,
            merges_base=True,
        ),
        StrategySpec(
            "ffa_lora",
            "A frozen from the seed, weighted average of B: exact (FFA-LoRA)",
            shared_seeds=False,
            aggregators=("mean", *COORDINATE_WISE, *SELECTING),
            heterogeneous_ranks=True,
            frozen_a=True,
        ),
        StrategySpec(
            "zo",
            "zo scalars summed per shared seed and replayed onto the global state",
            shared_seeds=True,
            aggregators=("mean",),  # the sum of bounded scalars per seed
            settings="zo",
        ),
        StrategySpec(
            "ferret",
            "clients' coordinates on shared-seed directions summed per slot and applied (Ferret)",
            shared_seeds=False,  # it trains the LoRA factors; zo clients are refused
            aggregators=("mean", *SELECTING),
            settings="ferret",
        ),
    )
}
