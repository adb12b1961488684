"""Checks a client's reply must pass before it may touch the global state."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedft.adapters import check_same_layout
from fedft.errors import ReplyError


def validate_factors(
    reply: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor], num_examples: float
) -> None:
    """Raise :class:`ReplyError` unless ``reply`` can be averaged into ``template``'s state.

    Checks, in order: the example count is a finite number > 0; the same tensor names and shapes
    as the global state; a floating dtype equal to the global one; finite values only.
    """
    if not (num_examples > 0 and num_examples < float("inf")):
        raise ReplyError(f"num-examples must be a finite number > 0, got {num_examples}")
    check_same_layout(reply, template, "reply")
    for name, tensor in reply.items():
        if tensor.dtype != template[name].dtype:
            raise ReplyError(
                f"reply: tensor {name!r} has dtype {tensor.dtype}, expected {template[name].dtype}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise ReplyError(f"reply: tensor {name!r} holds non-finite values (NaN or Inf)")
