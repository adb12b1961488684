"""The client runtimes, one file each, looked up by ``client.backend`` and the kind of step.

================  ============  ===============  ================================================
module            backend       steps            runtime
================  ============  ===============  ================================================
``torch_lora``    ``torch``     ``first_order``  peft LoRA, AdamW on the factors
``ort_lora``      ``ort``       ``first_order``  ONNX Runtime training on an edge bundle
``torch_zo``      ``torch``     ``zeroth_order`` SPSA steps on the factors, torch forward passes
                  ``zo``        ``zeroth_order``
``ort_zo``        ``ort``       ``zeroth_order`` SPSA steps, ONNX Runtime forward-only graph
``torch_ferret``  ``ferret``    ``first_order``  ``torch_lora``'s round sent as Ferret coordinates
                  ``ferret``    ``zeroth_order`` (``torch_zo``)
================  ============  ===============  ================================================

A runtime class subclasses :class:`ClientRuntime` and registers itself for a (backend, steps)
pair with :func:`register_runtime`: adding one is adding a file here (every module of this package
is imported when a runtime is looked up) and, for a new backend, its name in
``fedft.config.BACKENDS``, which the Flower-free config validates against
(``tests/unit/test_runtime_registry.py`` checks they agree). A node steps zeroth-order in a ``zo``
run and when its backend has no first-order runtime (``zo``); first-order otherwise.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal, TypeVar

from fedft.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from clients.replies import Reply
    from fedft.config import Scenario

Steps = Literal["first_order", "zeroth_order"]


class ClientRuntime(ABC):
    """One way a node trains a round: from the round's start factors to a reply."""

    @abstractmethod
    def train_round(
        self,
        scenario: Scenario,
        partition_id: int,
        start: Mapping[str, torch.Tensor],
        server_round: int,
        node: int,
    ) -> Reply:
        """Train the round's local steps from ``start``; return the reply the app sends.

        Parameters
        ----------
        scenario : Scenario
            The run's scenario (as this node sees it).
        partition_id : int
            The data this node trains on (0 for a device training on its own file).
        start : Mapping[str, torch.Tensor]
            The global factors at the start of the round.
        server_round : int
            The round, from 1.
        node : int
            The node's index in the scenario (its ``partition-id`` node config): unique per node,
            stable across runs; a zeroth-order runtime derives its seed indices from it.
        """


R = TypeVar("R", bound=type[ClientRuntime])
RUNTIMES: dict[tuple[str, Steps], type[ClientRuntime]] = {}


def register_runtime(backend: str, steps: Steps) -> Callable[[R], R]:
    """Class decorator: the runtime of ``client.backend = backend`` for ``steps`` rounds."""

    def register(cls: R) -> R:
        if RUNTIMES.get((backend, steps), cls) is not cls:
            raise ValueError(f"runtime ({backend!r}, {steps!r}) is registered twice")
        RUNTIMES[(backend, steps)] = cls
        return cls

    return register


def load_runtimes(backend: str | None = None) -> dict[tuple[str, Steps], type[ClientRuntime]]:
    """Every registered runtime, after importing every module of this package.

    With ``backend``, the modules named ``<backend>_*`` are imported first, and if they register
    ``backend`` no other is: an ``ort`` node imports ``ort_lora`` and ``ort_zo`` only, so a device
    without torch (which the torch runtimes import) can run them.
    """
    names = [module.name for module in pkgutil.iter_modules(__path__)]
    if backend is not None:
        for name in names:
            if name.startswith(f"{backend}_"):
                importlib.import_module(f"{__name__}.{name}")
        if any(b == backend for b, _ in RUNTIMES):
            return RUNTIMES
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return RUNTIMES


def runtime_for(backend: str, zo_run: bool) -> ClientRuntime:
    """The runtime a node with ``backend`` trains with; ``zo_run``: the run's strategy is zo.

    Raises
    ------
    ConfigError
        If no runtime is registered for the backend.
    """
    runtimes = load_runtimes(backend)
    if not any(b == backend for b, _ in runtimes):
        runtimes = load_runtimes()  # every module: the error names every known backend
    known = sorted({b for b, _ in runtimes})
    if backend not in known:
        raise ConfigError(
            "client.backend", f"unknown backend {backend!r} (known: {', '.join(known)})"
        )
    steps: Steps = "first_order"
    if zo_run or (backend, "first_order") not in runtimes:
        steps = "zeroth_order"
    if (backend, steps) not in runtimes:
        raise ConfigError("client.backend", f"{backend!r} has no {steps} runtime")
    return runtimes[(backend, steps)]()
