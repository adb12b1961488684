"""What a run leaves for its users: the base it names, and adapter folders that load anywhere.

An adapter folder (``adapter/``, and ``adapters/round-N/`` every ``run.save_every`` rounds: N = 2
gives ``round-2``, ``round-4``, ...) holds
peft's ``adapter_config.json`` and ``adapter_model.safetensors``, the tokenizer as training used it
(:func:`fedft.data.as_trained.tokenizer_as_trained`) and a model card (``README.md``).

``base_model_name_or_path`` names the base so that a copied run folder still works:

- the built-in tiny base is saved into the run folder (``base_model/``) and named relative to the
  run folder: ``base_model``;
- a Hugging Face folder or a GGUF file's converted folder is named by its absolute path, made
  relative to the run folder only when it lives inside it. A base outside the run folder does not
  travel with it, so no relative path would survive a move; the absolute one keeps working from
  any working directory on this machine, and ``fedft merge --base`` takes its new place elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from fedft.adapters import save_adapter
from fedft.config import Scenario
from fedft.data.as_trained import encodes_as_trained, tokenizer_as_trained
from fedft.model_card import model_card
from fedft.models import base_model_folder, load_base
from fedft.report import read_metrics
from fedft.zo.mask_build import MASK_FILE
from fedft.zo.sparse import SparseMask, installed, save_sparse_weights
from fedft.zo.trainable import save_module_weights

BASE_FOLDER = "base_model"
"""Where the built-in tiny base is saved, relative to the run folder."""


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Keep transformers' "Writing model shards" bars out of the run's progress lines."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def round_folder(run_dir: Path, server_round: int) -> Path:
    """The folder of the adapter saved after ``server_round`` (``run.save_every``)."""
    return run_dir / "adapters" / f"round-{server_round}"


def base_reference(scenario: Scenario, run_dir: Path) -> str:
    """``base_model_name_or_path`` for the run's adapters; saves the tiny base into the run folder.

    Parameters
    ----------
    scenario : Scenario
        The run's scenario (``model`` section).
    run_dir : Path
        The run folder.

    Returns
    -------
    str
        ``base_model`` for the tiny base; else the base folder relative to ``run_dir`` if it lies
        inside it, its absolute path otherwise.
    """
    folder = base_model_folder(scenario.model)
    if folder is None:
        base, tokenizer = load_base(scenario.model, scenario.run.seed)
        with _no_progress_bars():
            base.save_pretrained(run_dir / BASE_FOLDER)
        tokenizer_as_trained(tokenizer, scenario.data.chat).save_pretrained(run_dir / BASE_FOLDER)
        return BASE_FOLDER
    resolved = folder.resolve()
    try:
        return str(resolved.relative_to(run_dir.resolve()))
    except ValueError:
        return str(resolved)


def _round_row(run_dir: Path, server_round: int) -> Mapping | None:
    metrics = run_dir / "metrics.jsonl"
    rows = read_metrics(metrics) if metrics.is_file() else []
    found = [r for r in rows if r.get("kind") == "round" and r.get("round") == server_round]
    return found[-1] if found else None


def write_adapter_folder(
    model: PeftModel,
    factors: Mapping[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    scenario: Scenario,
    run_dir: Path,
    folder: Path,
    base_ref: str,
    server_round: int,
) -> Path:
    """Write the adapter of ``server_round`` into ``folder``: peft files, tokenizer, model card.

    Parameters
    ----------
    model : PeftModel
        The server's model (its LoRA factors are overwritten with ``factors``).
    factors : Mapping[str, torch.Tensor]
        The global factors after ``server_round``.
    tokenizer : transformers.PreTrainedTokenizerBase
        The tokenizer training used; the folder gets :func:`tokenizer_as_trained` of it.
    scenario : Scenario
        The run's scenario, for the model card.
    run_dir : Path
        The run folder (``metrics.jsonl`` gives the card its metrics).
    folder : Path
        Where to write (``run_dir / "adapter"`` or :func:`round_folder`).
    base_ref : str
        From :func:`base_reference`.
    server_round : int
        The round the factors come from.

    Returns
    -------
    Path
        ``folder``.
    """
    with _no_progress_bars():
        save_adapter(model, factors, folder, base_ref)
    saved = tokenizer_as_trained(tokenizer, scenario.data.chat)
    saved.save_pretrained(folder)
    card = model_card(
        scenario,
        base_ref,
        server_round,
        _round_row(run_dir, server_round),
        adapter_path=folder.resolve().relative_to(run_dir.resolve()).as_posix(),
        encodes_as_trained=scenario.data.chat or encodes_as_trained(saved),
    )
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


def write_outputs(
    model: PeftModel,
    factors: Mapping[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    scenario: Scenario,
    run_dir: Path,
    server_round: int,
    base_ref: str,
    final: bool,
) -> Path:
    """Write the run's output of ``server_round``: the final one, or a ``run.save_every`` one.

    A LoRA run writes an adapter folder (``adapter/``, or :func:`round_folder`); a run that trains
    module weights (``zo.trainable_modules``, ``ferret.trainable_modules``) writes those weights
    under the base model's own names (``zo_weights.safetensors``, ``ferret_weights.safetensors``:
    load them into the base with ``load_state_dict(..., strict=False)``) into the run folder or the
    round folder.

    Returns
    -------
    Path
        The adapter folder, or the weights file.
    """
    folder = run_dir if final else round_folder(run_dir, server_round)
    sparse = installed(model)
    if sparse is not None and scenario.zo.sparse:  # the deltas at the mask's positions
        folder.mkdir(parents=True, exist_ok=True)
        mask = SparseMask.decode((run_dir / MASK_FILE).read_bytes())
        return save_sparse_weights(mask, factors, folder / "zo_sparse.safetensors")
    if scenario.trained_modules:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{scenario.federation.spec.settings}_weights.safetensors"
        return save_module_weights(factors, folder / name)
    adapter = run_dir / "adapter" if final else folder
    return write_adapter_folder(
        model, factors, tokenizer, scenario, run_dir, adapter, base_ref, server_round
    )
