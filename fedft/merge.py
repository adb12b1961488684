"""``fedft merge``: fold a run's LoRA adapter into its base and save a plain Hugging Face model.

The result loads with ``AutoModelForCausalLM.from_pretrained(DIR)`` alone (no peft), with the
tokenizer as training used it. Folding is peft's ``merge_and_unload``: ``W + (alpha / r) B A`` per
target module, so the merged model computes what base plus adapter computed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from fedft.errors import FedftError
from fedft.strategies import MODULE_WEIGHT_FILES

ADAPTER_CONFIG = "adapter_config.json"


class AdapterError(FedftError):
    """An adapter folder, its base, or the output folder of ``fedft merge`` is unusable."""


def find_adapter(path: Path) -> Path:
    """The adapter folder named by ``path``: the folder itself, or a run folder's ``adapter/``.

    Raises
    ------
    AdapterError
        If ``path`` does not exist or holds no ``adapter_config.json`` (directly or in
        ``adapter/``), or its config is not a peft adapter config.
    """
    if not path.exists():
        raise AdapterError(f"{path}: no such adapter or run folder")
    for folder in (path, path / "adapter"):
        if (folder / ADAPTER_CONFIG).is_file():
            break
    else:
        weights = [name for name in MODULE_WEIGHT_FILES if (path / name).is_file()]
        hint = (
            f" (this run trained module weights: {weights[0]}, not a LoRA adapter)"
            if weights
            else ""
        )
        raise AdapterError(f"{path}: not an adapter folder (no {ADAPTER_CONFIG}){hint}")
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"{folder / ADAPTER_CONFIG}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise AdapterError(f"{folder / ADAPTER_CONFIG}: not a peft adapter config (no peft_type)")
    if not (folder / "adapter_model.safetensors").is_file():
        raise AdapterError(f"{folder}: adapter_model.safetensors is missing")
    return folder


def _run_folder(adapter: Path) -> Path | None:
    """The run folder holding ``adapter`` (``adapter/`` or ``adapters/round-N/``), if any."""
    for folder in (adapter, *list(adapter.resolve().parents)[:2]):
        if (folder / "config.toml").is_file():
            return folder
    return None


def resolve_base(adapter: Path, base: Path | None = None) -> Path:
    """The base folder of ``adapter``: ``base`` if given, else its ``base_model_name_or_path``.

    A relative ``base_model_name_or_path`` is looked up in the adapter's run folder first (fedft
    writes it relative to the run folder), then in the working directory.

    Raises
    ------
    AdapterError
        If the folder found (or given) holds no ``config.json``.
    """
    if base is not None:
        candidates, named = [base], f"--base {base}"
    else:
        config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        ref = config.get("base_model_name_or_path") or ""
        named = f"base_model_name_or_path {ref!r} in {adapter / ADAPTER_CONFIG}"
        run = _run_folder(adapter)
        candidates = [Path(ref)] if Path(ref).is_absolute() or run is None else [run / ref]
        if not Path(ref).is_absolute():
            candidates.append(Path(ref))
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    raise AdapterError(f"{named}: no Hugging Face model (config.json) there; pass --base DIR")


def merge_adapter(path: Path, out: Path, base: Path | None = None) -> Path:
    """Merge the adapter at ``path`` into its base and save the model and tokenizer in ``out``.

    Parameters
    ----------
    path : Path
        An adapter folder, or a run folder (its ``adapter/`` is taken).
    out : Path
        The new folder; it must not exist. Written atomically: it appears complete or not at all.
    base : Path, optional
        The base model folder, when the adapter's ``base_model_name_or_path`` does not resolve
        here (a base that moved).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    AdapterError
        ``out`` exists, the adapter or base folder is missing or invalid, or they do not fit.
    """
    if out.exists():
        raise AdapterError(f"--out {out} already exists: give a new folder")
    adapter = find_adapter(path)
    base_dir = resolve_base(adapter, base)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        base_model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    except (OSError, ValueError) as err:
        raise AdapterError(f"base model {base_dir}: cannot load ({_first_line(err)})") from None
    try:
        model = PeftModel.from_pretrained(base_model, adapter)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise AdapterError(
            f"adapter {adapter}: cannot load on {base_dir} ({_first_line(err)})"
        ) from None
    merged = model.merge_and_unload()
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(adapter if has_tokenizer else base_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_card(staging, adapter, base_dir)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_card(folder: Path, adapter: Path, base_dir: Path) -> None:
    card = adapter / "README.md"
    trained = card.read_text(encoding="utf-8") if card.is_file() else ""
    body = trained.split("---\n", 2)[-1] if trained.startswith("---\n") else trained
    header = (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\n"
        "tags: [fedft, lora, federated-learning, merged]\n---\n\n"
        f"Merged with `fedft merge`: the LoRA adapter `{adapter}` folded into `{base_dir}`. "
        "Load it with `AutoModelForCausalLM.from_pretrained` alone; the adapter's card follows.\n\n"
    )
    (folder / "README.md").write_text(header + body, encoding="utf-8")


def _first_line(err: BaseException) -> str:
    """The telling line of a loader's error (a size mismatch names the tensor and both shapes)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if "size mismatch" in line]
    return (telling or lines or [type(err).__name__])[0]
