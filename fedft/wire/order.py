"""The zo tensor order: the one layout in which every party perturbs the trainable tensors.

The perturbation ``z`` of a seed covers the trainable tensors one after the other
(:mod:`fedft.zo.rng`), so every client runtime (torch, numpy, ONNX Runtime), the server's rebuild
and replay, and a client's catch-up must list them in the same order: the tensor names sorted
(``protos/fedft/v1/zo.proto``, "Layout").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def zo_order(names: Iterable[str]) -> list[str]:
    """The tensor names in zo order (sorted)."""
    return sorted(names)


def in_zo_order(state: Mapping[str, T]) -> list[T]:
    """The tensors of ``state`` (a name -> tensor mapping) in zo order."""
    return [state[name] for name in zo_order(state)]
