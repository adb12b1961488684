"""Server checkpoints: one file written atomically after every completed round.

``<run_dir>/checkpoint.safetensors`` holds the global LoRA factors as tensors and, in its string
metadata, the JSON state: the last completed round, the strategy's own state (the zo history and
which round each node synced to), and the sampling RNG's state. A process killed at any moment
leaves either the previous checkpoint or the new one, never half of one (write, fsync, rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from fedft.errors import ConfigError

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """The server's state after ``round`` completed rounds."""

    round: int
    factors: dict[str, torch.Tensor]
    strategy_state: dict[str, Any]
    rng_state: Any  # how the next round's sampling RNG is seeded (a pure function of the round)


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write the checkpoint atomically; return its path."""
    path = run_dir / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    meta = {
        "format": str(FORMAT_VERSION),
        "round": str(checkpoint.round),
        "strategy": json.dumps(checkpoint.strategy_state),
        "rng": json.dumps(checkpoint.rng_state),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in checkpoint.factors.items()}
    save_file(tensors, str(tmp), metadata=meta)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read ``run_dir``'s checkpoint, naming the run folder if it has none or a bad one."""
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError("run.resume_dir", f"no checkpoint in {run_dir} (nothing to resume)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        factors = load_file(str(path))
        if meta.get("format") != str(FORMAT_VERSION):
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        return Checkpoint(
            round=int(meta["round"]),
            factors=factors,
            strategy_state=json.loads(meta["strategy"]),
            rng_state=json.loads(meta["rng"]),
        )
    except (ValueError, KeyError, OSError) as err:
        raise ConfigError("run.resume_dir", f"unreadable checkpoint {path}: {err}") from None


def checkpoint_round(run_dir: Path) -> int | None:
    """The last completed round ``run_dir``'s checkpoint holds (None without a checkpoint)."""
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return int((f.metadata() or {})["round"])
