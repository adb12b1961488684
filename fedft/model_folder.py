"""A local Hugging Face causal-LM folder, as a user has it: checked before anything loads it."""

from __future__ import annotations

from pathlib import Path

from fedft.schema import check

_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model_folder(folder: Path) -> None:
    """A local Hugging Face causal-LM folder: ``config.json``, weights and a tokenizer.

    Raises
    ------
    fedft.errors.ConfigError
        Naming ``model.path`` and the first of the three that is missing.
    """
    check(folder.is_dir(), "model.path", f"no model folder at {folder}")
    check(
        (folder / "config.json").is_file(),
        "model.path",
        f"no Hugging Face model (config.json) in {folder}",
    )
    check(
        any(next(folder.glob(pattern), None) for pattern in _WEIGHTS),
        "model.path",
        f"no weights (*.safetensors or pytorch_model*.bin) in {folder}",
    )
    check(
        any((folder / name).is_file() for name in _TOKENIZER),
        "model.path",
        f"no tokenizer (tokenizer.json or tokenizer_config.json) in {folder}: save it beside "
        "the model (tokenizer.save_pretrained)",
    )
