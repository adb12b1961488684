"""Local Hugging Face ``datasets`` data, offline: ``data.source = "hf"``.

``data.path`` names one of (``data.hf_format`` says which; ``auto`` tells by looking):

- ``disk``: a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (Arrow
  files plus ``dataset_info.json`` / ``state.json``, or ``dataset_dict.json`` for splits), read
  with ``datasets.load_from_disk``;
- ``parquet``, ``json`` (JSON Lines or a JSON array) or ``csv``: a file, or a folder of such files
  (all of one kind), read with ``datasets.load_dataset(<format>, data_files=...)``.

``data.split`` picks the split of a ``DatasetDict`` (``train`` by default; a dataset with a
single split uses it whatever its name). Each row becomes an :class:`~fedft.data.Example` as
:func:`fedft.data.examples.record_example` reads a JSON record: ``data.prompt_field`` +
``data.response_field`` (instruction / response), ``data.messages_field`` (a list of
``{role, content}`` chat messages ending with the assistant's), or ``data.text_field``.

Nothing is fetched: the Hub is switched off (``HF_DATASETS_OFFLINE``, ``HF_HUB_OFFLINE``) before
``datasets`` is imported, and ``load_dataset``'s Arrow cache goes to ``$FEDFT_CACHE/datasets``
(``~/.cache/fedft/datasets``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedft.data.examples import DataError, Example, Fields, record_example

if TYPE_CHECKING:
    from fedft.config import DataConfig

HF_FORMATS = ("auto", "disk", "parquet", "json", "csv")
_SUFFIXES = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def detect_format(path: Path) -> str:
    """``disk``, ``parquet``, ``json`` or ``csv`` for ``path`` (see the module docstring)."""
    if not path.exists():
        raise DataError(f"`data.path`: no such file or folder: {path}")
    if path.is_file():
        if path.suffix.lower() in _SUFFIXES:
            return _SUFFIXES[path.suffix.lower()]
        raise DataError(
            f"`data.path`: cannot tell the format of {path.name} (suffix {path.suffix or 'none'})"
            f": name it in `data.hf_format`, one of {HF_FORMATS[1:]}"
        )
    if any((path / marker).is_file() for marker in _DISK_MARKERS):
        return "disk"
    kinds = {_SUFFIXES[f.suffix.lower()] for f in _data_files(path)}
    if len(kinds) == 1:
        return kinds.pop()
    what = f"files of {len(kinds)} formats {sorted(kinds)}" if kinds else "no data files"
    raise DataError(
        f"`data.path`: {path} is not a folder saved with save_to_disk and holds {what} "
        f"(.parquet, .json, .jsonl or .csv): name the format in `data.hf_format`"
    )


def _data_files(folder: Path, fmt: str | None = None) -> list[Path]:
    """Data files under ``folder`` (recursively, sorted), of format ``fmt`` if given."""
    return sorted(
        f
        for f in folder.rglob("*")
        if f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
        and _SUFFIXES.get(f.suffix.lower()) in ((fmt,) if fmt else tuple(_SUFFIXES.values()))
    )


def _csv_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return next(csv.reader(handle), [])


def _offline_datasets() -> Any:
    """``datasets``, imported with the Hub switched off (see the module docstring)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise DataError("`data.source` = 'hf' needs the `datasets` package") from None
    datasets.disable_progress_bars()
    return datasets


def load_rows(path: Path, fmt: str = "auto", split: str = "train") -> tuple[Any, str]:
    """The ``datasets.Dataset`` at ``path`` (one split) and the format it was read as."""
    if fmt not in HF_FORMATS:
        raise DataError(f"`data.hf_format`: unknown format {fmt!r}, expected one of {HF_FORMATS}")
    if not path.exists():
        raise DataError(f"`data.path`: no such file or folder: {path}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    datasets = _offline_datasets()
    try:
        if fmt == "disk":
            loaded = datasets.load_from_disk(str(path))
        else:
            files = [path] if path.is_file() else _data_files(path, fmt)
            if not files:
                raise DataError(f"`data.path`: {path} holds no {fmt} files")
            cache = Path(os.environ.get("FEDFT_CACHE", Path.home() / ".cache" / "fedft"))
            options: dict[str, Any] = {}
            if (
                fmt == "csv"
            ):  # cells verbatim, as fedft's own CSV reader: "4" stays text, so does "NA"
                header = _csv_header(files[0])
                features = {name: datasets.Value("string") for name in header}
                options = {"features": datasets.Features(features), "keep_default_na": False}
            loaded = datasets.load_dataset(
                fmt,
                data_files=[str(f) for f in files],
                cache_dir=str(cache / "datasets"),
                **options,
            )
    except DataError:
        raise
    except Exception as err:  # datasets' and pyarrow's many error types: a bad or foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"`data.path`: cannot read {path} as {fmt}: {first}") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if split in loaded:
            loaded = loaded[split]
        elif len(names) == 1:
            loaded = loaded[names[0]]
        else:
            raise DataError(f"`data.split`: {path} has no split {split!r} (it has {names})")
    return loaded, fmt


def hf_examples(data: DataConfig) -> list[Example]:
    """Every row of the local dataset ``data.path`` as an :class:`Example` (module docstring)."""
    path = Path(data.path)
    rows, fmt = load_rows(path, data.hf_format, data.split)
    fields = Fields(
        data.prompt_field,
        data.response_field,
        data.text_field,
        data.key_field,
        data.messages_field,
        data.input_field,
    )
    columns = list(rows.column_names)
    usable = (fields.prompt, fields.messages, fields.text)
    if not any(name in columns for name in usable):
        raise DataError(
            f"`data.path`: {path} has no column {fields.prompt!r} (instruction), "
            f"{fields.messages!r} (chat messages) or {fields.text!r} (text); its columns are "
            f"{columns} (set data.prompt_field, data.messages_field or data.text_field)"
        )
    needed = [("response_field", fields.response)] if fields.prompt in columns else []
    needed += [("key_field", fields.key)] if fields.key else []
    for key, name in needed:
        if name not in columns:
            raise DataError(f"`data.{key}`: {path} has no column {name!r} (it has {columns})")
    examples = [
        # a column missing from some rows of a file holds None there: the row does not have it
        record_example({k: v for k, v in row.items() if v is not None}, fields, f"{path}, row {i}")
        for i, row in enumerate(rows)
    ]
    if not examples:
        raise DataError(f"`data.path`: {path} ({fmt}) has no rows")
    return examples
