"""Where a model runs: the torch device a ``client.device`` preference names on this machine."""

from __future__ import annotations

import torch

from fedft.errors import ConfigError


def select_device(preference: str) -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; ``cuda`` without a GPU is an error.

    Raises
    ------
    ConfigError
        Naming ``client.device`` when it is ``cuda`` and torch sees no CUDA device.
    """
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("client.device", "is 'cuda' but no CUDA device is available here")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)
