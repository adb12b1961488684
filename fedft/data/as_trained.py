"""The tokenizer a run folder ships: its plain call encodes a prompt exactly as training did.

Training builds a prompt's ids itself (:func:`fedft.data.encode.encode_prompt`)::

    [bos] + tokenizer(template.format(prompt=...), add_special_tokens=False)

so that every tokenizer sees the same row whatever it adds by itself. A user of the output folder
calls ``tokenizer(text)``, which adds what the tokenizer's post-processor says: Llama tokenizers
add ``bos``, GPT-2-style ones (SmolLM2, GGUF-converted or not) and fedft's built-in character
tokenizer add nothing. Without ``bos`` the adapter generates far worse than it trained (greedy
exact match on 100 held-out built-in questions after the default 3-round run: 9/100 without,
32/100 with ``bos``, where the run reported accuracy 0.34). :func:`tokenizer_as_trained`
returns a copy whose post-processor adds exactly ``bos`` (and no ``eos``), so the saved
``tokenizer.json`` reproduces training's ids through ``AutoTokenizer.from_pretrained``.

A chat run (``data.chat`` with a chat template) encodes the rendered template with no special tokens
added; ``apply_chat_template(..., add_generation_prompt=True)`` does exactly that whatever the
post-processor, so the copy keeps the tokenizer's own post-processor then (adding ``bos`` there
would double it for a user who tokenizes the rendered text, whose first token is often ``bos``).
"""

from __future__ import annotations

import copy
import logging

from transformers import PreTrainedTokenizerBase

from fedft.data.encode import encode_prompt

__all__ = ["encodes_as_trained", "tokenizer_as_trained"]

log = logging.getLogger(__name__)

_PROBE = "Hello, world! 42\n"


def encodes_as_trained(tokenizer: PreTrainedTokenizerBase, text: str = _PROBE) -> bool:
    """Whether ``tokenizer(text)`` gives the ids training uses for a non-chat prompt ``text``.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        Any Hugging Face tokenizer.
    text : str
        A prompt, already formatted with ``data.template``.

    Returns
    -------
    bool
    """
    return tokenizer(text)["input_ids"] == encode_prompt(text, tokenizer, template="{prompt}")


def tokenizer_as_trained(
    tokenizer: PreTrainedTokenizerBase, chat: bool = False
) -> PreTrainedTokenizerBase:
    """A copy of ``tokenizer`` whose ``tokenizer(text)`` gives the ids training fed the model.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        The tokenizer training used (left unchanged).
    chat : bool
        ``data.chat``: with a chat template, training's prompt is the rendered template, which
        ``apply_chat_template`` reproduces; the copy keeps the tokenizer's own post-processor.

    Returns
    -------
    transformers.PreTrainedTokenizerBase
        For a non-chat run: adds ``bos`` (when the tokenizer has one) and never ``eos``, so
        ``tokenizer(template.format(prompt=p))["input_ids"]`` equals training's prompt ids. A
        tokenizer whose backend cannot be told so (no ``add_bos_token``) is logged with a warning;
        the model card spells out the encoding either way.

    Examples
    --------
    >>> from fedft.data import char_tokenizer
    >>> tok = tokenizer_as_trained(char_tokenizer())
    >>> tok("ab")["input_ids"]  # <bos> a b
    [1, 14, 15]
    """
    saved = copy.deepcopy(tokenizer)
    if chat and tokenizer.chat_template:
        return saved
    try:
        saved.add_bos_token = tokenizer.bos_token_id is not None
        saved.add_eos_token = False
    except (AttributeError, NotImplementedError, ValueError):
        pass
    if not encodes_as_trained(saved):
        log.warning(
            "tokenizer %s cannot be set to add bos by itself: prompt the adapter with "
            "[bos] + tokenizer(text, add_special_tokens=False) (see the model card)",
            type(tokenizer).__name__,
        )
    return saved
