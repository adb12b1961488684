"""The server's strategies, one file each, looked up by the name ``federation.strategy`` gives.

================  =====================================================================
module            strategy
================  =====================================================================
``fedit``         ``fedit``: FedAvg of the LoRA factors (FedIT), every reply validated
``lora_fair``     ``lora_fair``: FedIT's replies, aggregated with LoRA-FAIR's correction
``zo``            ``zo``: shared-seed zeroth-order records, summed per seed and replayed
``flexlora``      ``flexlora``: truncated SVD of ``sum_k p_k B_k A_k`` (per-client ranks)
``flora``         ``flora``: the stacked factors merged into the base, a fresh LoRA each round
``ffa_lora``      ``ffa_lora``: ``lora_A`` frozen, ``lora_B`` averaged (exact)
================  =====================================================================

A strategy class registers its name with :func:`register_strategy` and builds itself from the
scenario with ``from_scenario``: adding one is adding a file here (every module of this package is
imported when a name is looked up) and its entry to :data:`fedft.strategies.STRATEGIES`, the one
list of names (with each one's capabilities) that the Flower-free config validates against
(``tests/unit/test_strategy_registry.py`` checks the registry's names are exactly those).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TypeVar

from fedft.errors import ConfigError

T = TypeVar("T", bound=type)
STRATEGIES: dict[str, type] = {}


def register_strategy(name: str) -> Callable[[T], T]:
    """Class decorator: make the strategy class available as ``federation.strategy = name``."""

    def register(cls: T) -> T:
        if STRATEGIES.get(name, cls) is not cls:
            raise ValueError(f"strategy {name!r} is registered twice")
        STRATEGIES[name] = cls
        return cls

    return register


def strategy_class(name: str) -> type:
    """The strategy class registered as ``name``, after importing every strategy module.

    Raises
    ------
    ConfigError
        If no strategy has that name.
    """
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    if name not in STRATEGIES:
        known = ", ".join(sorted(STRATEGIES))
        raise ConfigError("federation.strategy", f"unknown strategy {name!r} (known: {known})")
    return STRATEGIES[name]
