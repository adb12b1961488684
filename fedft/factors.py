"""A LoRA *factor state* as data: its names, its layout check and its digest (no peft, no torch).

A factor state is a flat ``dict[str, torch.Tensor]`` keyed as in a saved PEFT adapter
(``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight``): :data:`FACTOR_NAME` parses
those names for the maths (LoRA-FAIR's pairing, the reply checks). Moving a state in and out of a
live peft model is :mod:`fedft.adapters`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from fedft.errors import ReplyError

if TYPE_CHECKING:
    import torch

FactorState: TypeAlias = "dict[str, torch.Tensor]"

FACTOR_NAME = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")
"""``<module>.lora_A.weight`` / ``<module>.lora_B.weight``: groups ``module`` and ``factor``."""


def factors_digest(factors: Mapping[str, torch.Tensor] | Mapping[str, np.ndarray]) -> int:
    """A 48-bit digest of names, shapes, dtypes and exact bits (fits a float64 metric exactly).

    Torch tensors and numpy arrays of the same values give the same digest (the dtype is written
    as torch names it, ``torch.float32``), so a device without torch reports what a torch one does.
    """
    digest = hashlib.sha256()
    for name in sorted(factors):
        value = factors[name]
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value)
            dtype = f"torch.{array.dtype.name}"  # float32 -> torch.float32, as torch prints it
        else:  # a torch tensor (bfloat16 has no numpy dtype: read its bytes through uint8)
            import torch

            tensor = value.detach().cpu().contiguous()
            array, dtype = tensor.view(torch.uint8).numpy(), str(tensor.dtype)
        digest.update(f"{name}:{tuple(value.shape)}:{dtype};".encode())
        digest.update(array.tobytes() if array.size else b"")
    return int.from_bytes(digest.digest()[:6], "big")


def check_same_layout(
    got: Mapping[str, torch.Tensor] | Mapping[str, np.ndarray],
    expected: Mapping[str, torch.Tensor] | Mapping[str, np.ndarray],
    what: str,
) -> None:
    """Raise :class:`ReplyError` unless ``got`` has exactly ``expected``'s names and shapes."""
    missing = sorted(set(expected) - set(got))
    if missing:
        raise ReplyError(f"{what}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    unknown = sorted(set(got) - set(expected))
    if unknown:
        raise ReplyError(f"{what}: unknown tensor {unknown[0]!r}")
    for name, tensor in expected.items():
        if tuple(got[name].shape) != tuple(tensor.shape):
            raise ReplyError(
                f"{what}: tensor {name!r} has shape {tuple(got[name].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
