"""Examples and the readers that load them from JSON Lines and CSV files.

An :class:`Example` is an instruction pair (``prompt`` -> ``response``), a conversation (a list of
``{"role", "content"}`` messages ending with the assistant's: the last assistant message is the
``response``, the turns before it are ``history``) or a plain text (``prompt == ""``, the whole
text in ``response``). Loss is taken on the response tokens only, so a plain text trains on all
of its tokens and a conversation on its last assistant turn. ``key`` is an optional group label
(a category, a label, a task name) that the non-IID partitioners split on.

Both readers raise :class:`DataError` with a one-line message naming the file, the line and the
field, e.g. ``data.jsonl, line 3: field 'response' must be a string, got int``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fedft.errors import FedftError

__all__ = [
    "DataError",
    "Example",
    "Fields",
    "read_csv",
    "read_jsonl",
    "record_example",
    "render_turns",
]


class DataError(FedftError, ValueError):
    """A data file or a packaged data set is missing, malformed or empty."""


@dataclass(frozen=True)
class Example:
    """One training example.

    Attributes
    ----------
    prompt : str
        The instruction; ``""`` for a plain text.
    response : str
        The target text (the whole text for a plain text); loss is computed on it only.
    key : str
        Group label used by the non-IID partitioners (``""`` when there is none).
    history : tuple of (role, content) pairs
        A conversation's messages before its last (assistant) one; ``()`` otherwise. A chat
        template renders them as the prompt; without one, ``prompt`` holds them as plain text
        (:func:`render_turns`).
    """

    prompt: str
    response: str
    key: str = ""
    history: tuple[tuple[str, str], ...] = ()


def render_turns(turns: Sequence[tuple[str, str]]) -> str:
    """A conversation as plain text, one ``Role: content`` line per message (no chat template)."""
    return "\n".join(f"{role.capitalize()}: {content}" for role, content in turns)


@dataclass(frozen=True)
class Fields:
    """Names of the fields a record is read from (``messages=""``: no conversations)."""

    prompt: str
    response: str
    text: str
    key: str
    messages: str = "messages"
    input: str = ""  # an instruction's optional context (Alpaca's "input"), appended to it


def read_jsonl(
    path: str | os.PathLike[str],
    prompt_field: str = "instruction",
    response_field: str = "response",
    text_field: str = "text",
    key_field: str = "",
    messages_field: str = "messages",
    input_field: str = "",
) -> list[Example]:
    """Read examples from a JSON Lines file, one JSON object per line.

    A record holding ``prompt_field`` is an instruction pair and must also hold
    ``response_field``; one holding ``messages_field`` is a conversation; otherwise it is a plain
    text and must hold ``text_field``. Blank lines are skipped.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.jsonl`` file.
    prompt_field, response_field, text_field : str
        Field names of the instruction, its response and a plain text.
    key_field : str
        If not empty, every record must hold this field (a string or an integer); it becomes
        :attr:`Example.key`.
    messages_field : str
        Field name of a conversation: a list of ``{"role": ..., "content": ...}`` objects.
    input_field : str
        If not empty, the field of an instruction's optional context (Alpaca's ``input``): when
        a record has it non-empty, the prompt is the instruction, a blank line and the input.

    Returns
    -------
    list of Example
        In file order.

    Raises
    ------
    DataError
        Missing or undecodable file, a line that is not a JSON object, a missing field, a value that
        is not a string, an empty response, or no record at all.
    """
    fields = Fields(
        prompt_field, response_field, text_field, key_field, messages_field, input_field
    )
    examples = []
    for line_no, line in _lines(Path(path)):
        if not line.strip():
            continue
        where = f"{path}, line {line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        examples.append(record_example(record, fields, where))
    if not examples:
        raise DataError(f"{path}: no records (the file is empty)")
    return examples


def read_csv(
    path: str | os.PathLike[str],
    prompt_field: str = "instruction",
    response_field: str = "response",
    text_field: str = "text",
    key_field: str = "",
    input_field: str = "",
) -> list[Example]:
    """Read examples from a CSV file with a header row (:mod:`csv`, default dialect).

    If the header has a ``prompt_field`` column, every row is an instruction pair (and the header
    must have ``response_field``); otherwise every row is a plain text from ``text_field``. Quoted
    cells may span lines; errors give the line on which the row starts.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.csv`` file, UTF-8 (a byte-order mark is accepted).
    prompt_field, response_field, text_field : str
        Column names of the instruction, its response and a plain text.
    key_field : str
        If not empty, the header must have this column; it becomes :attr:`Example.key`.

    Returns
    -------
    list of Example
        In file order.

    Raises
    ------
    DataError
        Missing or undecodable file, missing header or column, a short or long row, an empty
        response, or no data row at all.
    """
    path = Path(path)
    fields = Fields(prompt_field, response_field, text_field, key_field, "", input_field)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return _read_csv_rows(handle, fields, path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV ({err})") from None


def _read_csv_rows(handle: TextIO, fields: Fields, path: Path) -> list[Example]:
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: no header row (the file is empty)")
    needed = _csv_columns(header, fields)
    missing = [name for name in needed if name not in header]
    if missing:
        raise DataError(f"{path}, line 1: header has no column {missing[0]!r} (has {header})")
    examples = []
    start = reader.line_num + 1
    for row in reader:
        where = f"{path}, line {start}"
        start = reader.line_num + 1
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} cells, the header has {len(header)}")
        examples.append(record_example(dict(zip(header, row, strict=True)), fields, where))
    if not examples:
        raise DataError(f"{path}: no data rows after the header")
    return examples


def _csv_columns(header: list[str], fields: Fields) -> list[str]:
    """Columns a CSV file needs, given whether it holds instruction pairs or plain texts."""
    needed = [fields.prompt, fields.response] if fields.prompt in header else [fields.text]
    return needed + ([fields.key] if fields.key else [])


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` pairs of a UTF-8 text file, as typed errors."""
    try:
        with path.open(encoding="utf-8-sig") as handle:
            yield from enumerate(handle, start=1)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None


def record_example(record: Mapping[str, Any], fields: Fields, where: str) -> Example:
    """Build one :class:`Example` from a parsed record; ``where`` names file and line (or row)."""
    if fields.messages and fields.prompt not in record and fields.messages in record:
        return _conversation(record, fields, where)
    if fields.prompt in record:
        prompt = _string(record, fields.prompt, where)
        if fields.input and record.get(fields.input):
            prompt = f"{prompt}\n\n{_string(record, fields.input, where)}"
        response = _string(record, fields.response, where)
        name = fields.response
    elif fields.text in record:
        prompt, response, name = "", _string(record, fields.text, where), fields.text
    else:
        raise DataError(
            f"{where}: missing field {fields.prompt!r} (instruction), {fields.messages!r} "
            f"(chat messages) or {fields.text!r} (text)"
        )
    if not response.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return Example(prompt, response, _key(record, fields.key, where))


def _conversation(record: Mapping[str, Any], fields: Fields, where: str) -> Example:
    """A conversation record: its last message is the assistant's response, the rest history."""
    messages = record[fields.messages]
    name = fields.messages
    if not isinstance(messages, list | tuple) or not messages:
        raise DataError(f"{where}: field {name!r} must be a non-empty list of messages")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise DataError(f"{where}: {name}[{i}] must be an object with 'role' and 'content'")
        role = _string(message, "role", f"{where}: {name}[{i}]")
        turns.append((role, _string(message, "content", f"{where}: {name}[{i}]")))
    if turns[-1][0] != "assistant":
        raise DataError(
            f"{where}: the last message of {name!r} must be the assistant's (the response), "
            f"got role {turns[-1][0]!r}"
        )
    history, response = tuple(turns[:-1]), turns[-1][1]
    if not history:
        raise DataError(f"{where}: field {name!r} has no message before the assistant's")
    if not response.strip():
        raise DataError(f"{where}: {name}[{len(turns) - 1}]: field 'content' is empty")
    return Example(render_turns(history), response, _key(record, fields.key, where), history)


def _string(record: Mapping[str, Any], field: str, where: str) -> str:
    if field not in record:
        raise DataError(f"{where}: missing field {field!r}")
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def _key(record: Mapping[str, Any], field: str, where: str) -> str:
    """The record's group key: a string or an integer label, or ``""`` when no key is asked."""
    if not field:
        return ""
    if field not in record:
        raise DataError(f"{where}: missing key field {field!r}")
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(
            f"{where}: key field {field!r} must be a string or an integer, "
            f"got {type(value).__name__}"
        )
    return str(value)
