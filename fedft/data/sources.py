"""The data sources a scenario's ``data.source`` names, each a loader of all its examples.

A loader takes the scenario's :class:`~fedft.config.DataConfig` and the run's seed and returns every
example of the source, before any sampling or split (:func:`fedft.task.load_examples` does those).
Adding a source is a loader here plus its name in ``DataConfig.source``'s ``Literal``;
``tests/unit/test_data.py`` checks the two agree.
"""

from __future__ import annotations

from collections.abc import Callable

from fedft.config import DataConfig
from fedft.data.builtin import builtin_task
from fedft.data.examples import Example, read_csv, read_jsonl
from fedft.data.hf_datasets import hf_examples
from fedft.data.packaged import chatterbot_examples, rotten_tomatoes_examples

DataSource = Callable[[DataConfig, int], list[Example]]


def _fields(data: DataConfig) -> dict[str, str]:
    """The field names a file source reads its examples with."""
    return {
        "prompt_field": data.prompt_field,
        "response_field": data.response_field,
        "text_field": data.text_field,
        "key_field": data.key_field,
        "input_field": data.input_field,
    }


def _jsonl(data: DataConfig, seed: int) -> list[Example]:
    return read_jsonl(data.path, messages_field=data.messages_field, **_fields(data))


DATA_SOURCES: dict[str, DataSource] = {
    "builtin": lambda data, seed: builtin_task(data.num_examples, seed),
    "jsonl": _jsonl,
    "csv": lambda data, seed: read_csv(data.path, **_fields(data)),
    "hf": lambda data, seed: hf_examples(data),
    "chatterbot": lambda data, seed: chatterbot_examples(),
    "rotten_tomatoes": lambda data, seed: rotten_tomatoes_examples(),
}
"""``data.source`` -> its loader: ``loader(data, seed)`` gives all the source's examples."""
