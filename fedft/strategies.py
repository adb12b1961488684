"""The aggregation strategies as the library knows them: each one's name and capabilities.

``federation.strategy`` takes one of :data:`STRATEGIES`' names, and ``server/strategies/``
registers one Flower class under each (``tests/unit/test_strategy_registry.py`` checks that the
registry's names are exactly these: adding a strategy is its file there plus its entry here).
What the rest of fedft needs to know of a strategy is a capability below, never a comparison with
its name.

- ``fedit``: weighted average of A and B separately (FedIT, arXiv 2305.05644);
- ``lora_fair``: FedIT's averages with B corrected towards ``sum_k p_k B_k A_k`` (LoRA-FAIR,
  arXiv 2411.14961), settings in ``[lora_fair]``;
- ``zo``: clients' ``g`` summed per shared seed and replayed onto the global state (FedKSeed-style
  zeroth order), settings in ``[zo]``;
- ``ferret``: clients' first-order updates as coordinates on shared-seed directions, summed per
  slot and applied to the global factors (Ferret, arXiv 2409.06277), settings in ``[ferret]``.
"""

from __future__ import annotations

from dataclasses import dataclass

COORDINATE_WISE = ("median", "trimmed_mean")  # robust aggregators that replace the strategy's own
SELECTING = ("krum", "multi_krum")  # robust aggregators that only pick the replies to aggregate
MODULE_WEIGHT_FILES = ("zo_weights.safetensors", "ferret_weights.safetensors")
"""A run that trains module weights (``<settings>.trainable_modules``) writes
``<settings>_weights.safetensors`` instead of an adapter: the weights under the base's names."""


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
    """

    name: str
    aggregate: str
    shared_seeds: bool
    aggregators: tuple[str, ...]
    settings: str = ""


STRATEGIES: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec(
            "fedit",
            "weighted average of A and B separately (FedIT)",
            shared_seeds=False,
            aggregators=("mean", *COORDINATE_WISE, *SELECTING),
        ),
        StrategySpec(
            "lora_fair",
            "FedIT's averages with B corrected towards sum_k p_k B_k A_k (LoRA-FAIR)",
            shared_seeds=False,
            aggregators=("mean", *SELECTING),  # its target is the weighted mean of B_k A_k
            settings="lora_fair",
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
