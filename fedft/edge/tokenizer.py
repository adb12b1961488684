"""An edge bundle's tokenizer on a device without transformers: the ``tokenizers`` package alone.

A bundle's ``tokenizer/`` folder is a Hugging Face fast tokenizer (``tokenizer.json`` plus
``tokenizer_config.json``). :func:`load_tokenizer` opens it with transformers' ``AutoTokenizer``
when transformers is installed, else as a :class:`BundleTokenizer`: the same ``tokenizer.json``
run by the same Rust library, with the special tokens of ``tokenizer_config.json``, and the few
methods :func:`fedft.data.encode.encode_examples` calls. Both give the same ids
(``tests/unit/test_torch_free.py``). Chat templates (``data.chat``) are rendered by transformers
only: a :class:`BundleTokenizer` refuses them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedft.data.examples import DataError
from fedft.edge.errors import EdgeError

SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _token_text(value: object) -> str | None:
    """A special token as ``tokenizer_config.json`` holds it: a string, or ``{"content": ...}``."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


class BundleTokenizer:
    """A fast tokenizer read with ``tokenizers`` only (no transformers, no torch).

    Parameters
    ----------
    folder : str or Path
        A saved Hugging Face tokenizer: ``tokenizer.json`` and ``tokenizer_config.json``.
    """

    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise EdgeError(f"{folder}: no tokenizer.json (a device without transformers needs it)")
        self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.backend.no_truncation()
        self.backend.no_padding()
        config: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
            if (folder / name).is_file():
                config.update(json.loads((folder / name).read_text(encoding="utf-8")))
        self.chat_template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():  # where transformers 5 saves it
            self.chat_template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        self.ids: dict[str, int | None] = {}
        for key in SPECIAL_TOKENS:
            text = _token_text(config.get(key))
            self.ids[key] = None if text is None else self.backend.token_to_id(text)

    @property
    def bos_token_id(self) -> int | None:
        """Id of the ``bos_token`` (None without one)."""
        return self.ids["bos_token"]

    @property
    def eos_token_id(self) -> int | None:
        """Id of the ``eos_token`` (None without one)."""
        return self.ids["eos_token"]

    @property
    def pad_token_id(self) -> int | None:
        """Id of the ``pad_token`` (None without one)."""
        return self.ids["pad_token"]

    def __call__(
        self, text: str | Sequence[str], add_special_tokens: bool = False
    ) -> dict[str, Any]:
        """``{"input_ids": ids}`` of one text, or a list of ids per text (as transformers)."""
        if isinstance(text, str):
            encoding = self.backend.encode(text, add_special_tokens=add_special_tokens)
            return {"input_ids": encoding.ids}
        encoded = self.backend.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encoded]}

    def apply_chat_template(self, *args: object, **kwargs: object) -> str:
        """Refuse: chat templates are rendered with transformers (jinja2)."""
        raise DataError(
            "`data.chat`: this device has no transformers to render the tokenizer's chat "
            "template; install transformers, or run with data.chat = false"
        )


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved in ``folder``: ``AutoTokenizer``, or a :class:`BundleTokenizer`.

    transformers' when it is installed (chat templates work), else the ``tokenizers``-only one
    (the same ids).
    """
    try:
        from transformers import AutoTokenizer
    except ImportError:  # a device without transformers
        return BundleTokenizer(folder)
    return AutoTokenizer.from_pretrained(folder)
