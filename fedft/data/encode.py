"""Turn examples into fixed-length token tensors, and the character-level tokenizer.

One encoded row reads ``[bos] prompt-part response eos pad...``:

- the prompt part is ``template.format(prompt=...)`` (or the tokenizer's chat template when
  ``chat=True`` and it has one, on a conversation's turns before its last assistant message, or
  on one user turn); its labels are ``-100``, so no loss is taken on it;
- the response tokens and ``eos`` carry their own ids as labels (Hugging Face convention: labels are
  aligned with ``input_ids``; the model shifts them);
- padding has ``attention_mask`` 0 and labels ``-100``.

Rows longer than ``max_length`` are cut on the right; a row whose response is cut away entirely is
dropped and counted in :attr:`EncodedDataset.num_dropped`. An exact-match accuracy can be computed
from ``labels`` alone: a row is correct when every position with ``labels != -100`` is predicted.

Rows are torch tensors, or (``numpy=True``, a device without torch) numpy arrays of the same
int64 values; the tokenizer is any object with the few methods of a Hugging Face tokenizer used
here (:class:`fedft.edge.tokenizer.BundleTokenizer` needs only the ``tokenizers`` package).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedft.data.examples import DataError, Example

if TYPE_CHECKING:  # torch and transformers are imported where used: numpy devices need neither
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "CHAR_SPECIAL_TOKENS",
    "IGNORE_INDEX",
    "EncodedDataset",
    "char_tokenizer",
    "encode_examples",
    "encode_prompt",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of positions that take no loss (prompt, padding): ``CrossEntropyLoss``'s ignore_index."""

CHAR_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
"""Special tokens of :func:`char_tokenizer`, with ids 0, 1, 2, 3 in this order."""

_DEFAULT_ALPHABET = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")


@dataclass(frozen=True)
class EncodedDataset:
    """Token tensors of encoded examples, all ``torch.long`` of shape ``(N, max_length)``.

    Or int64 numpy arrays (``encode_examples(..., numpy=True)``): the same values, and
    :meth:`subset` and :meth:`batches` give numpy arrays too.

    Attributes
    ----------
    input_ids, attention_mask, labels : torch.Tensor or numpy.ndarray
        ``(N, L)``; ``labels`` is ``-100`` outside the response and its ``eos``.
    keys : list of str
        :attr:`Example.key` of each row.
    num_dropped : int
        Examples left out because truncation removed their whole response.
    """

    input_ids: Any  # torch.Tensor, or numpy.ndarray (numpy=True); Any: both index alike
    attention_mask: Any
    labels: Any
    keys: list[str]
    num_dropped: int = 0

    def _rows(self, index: np.ndarray) -> dict[str, Any]:
        """``input_ids``, ``attention_mask``, ``labels`` at the int64 row ``index``, as stored."""
        rows: Any = index
        if not isinstance(self.input_ids, np.ndarray):
            import torch

            rows = torch.as_tensor(index)
        return {
            "input_ids": self.input_ids[rows],
            "attention_mask": self.attention_mask[rows],
            "labels": self.labels[rows],
        }

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray) -> EncodedDataset:
        """Return the rows at ``indices`` (in that order) as a new dataset.

        Parameters
        ----------
        indices : sequence of int or numpy.ndarray
            Row indices, e.g. one client's partition.

        Returns
        -------
        EncodedDataset
            ``num_dropped`` is 0: drops belong to the dataset they were encoded for.
        """
        index = np.asarray(indices, dtype=np.int64)
        return EncodedDataset(**self._rows(index), keys=[self.keys[i] for i in index.tolist()])

    def batches(self, batch_size: int, seed: int, steps: int) -> Iterator[dict[str, Any]]:
        """Yield exactly ``steps`` batches, cycling through freshly shuffled epochs.

        The rows are read as one stream of seeded permutations (epoch after epoch), cut into
        consecutive batches, so a batch may span two epochs. ``batch_size`` is capped at
        ``len(self)``, so no batch holds a row twice.

        Parameters
        ----------
        batch_size : int
            Rows per batch (> 0).
        seed : int
            Seeds ``numpy.random.default_rng``; the same seed gives the same batches.
        steps : int
            Number of batches (>= 0).

        Yields
        ------
        dict of str to torch.Tensor (or numpy.ndarray)
            ``input_ids``, ``attention_mask`` and ``labels``, each ``(batch, L)``.
        """
        if batch_size <= 0 or steps < 0:
            raise ValueError(f"batch_size must be > 0 and steps >= 0, got {batch_size}, {steps}")
        if len(self) == 0:
            raise DataError("cannot draw batches from an empty dataset")
        rng = np.random.default_rng(seed)
        size = min(batch_size, len(self))
        pending = np.empty(0, dtype=np.int64)
        for _ in range(steps):
            if len(pending) < size:
                pending = np.concatenate([pending, rng.permutation(len(self))])
            index, pending = pending[:size], pending[size:]
            yield self._rows(index)


def char_tokenizer(alphabet: str | None = None) -> PreTrainedTokenizerFast:
    """Build a character-level tokenizer: one token per character, ``<unk>`` for the rest.

    Parameters
    ----------
    alphabet : str, optional
        The characters of the vocabulary (duplicates ignored). Default: printable ASCII (letters,
        digits, punctuation, space) and the newline.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Ids 0-3 are ``<pad> <bos> <eos> <unk>``, then the alphabet in order. It adds no special
        tokens by itself, round-trips with ``save_pretrained`` and
        ``AutoTokenizer.from_pretrained``, and ``decode`` joins characters without spaces.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(_DEFAULT_ALPHABET if alphabet is None else alphabet))
    if not chars:
        raise ValueError("alphabet must hold at least one character")
    vocab = {token: i for i, token in enumerate([*CHAR_SPECIAL_TOKENS, *chars])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    pad, bos, eos, unk = CHAR_SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk
    )


def encode_prompt(
    prompt: str,
    tokenizer: PreTrainedTokenizerBase,
    template: str = "{prompt}\n",
    chat: bool = False,
    history: Sequence[tuple[str, str]] = (),
) -> list[int]:
    """Token ids that precede the response: ``bos`` + formatted prompt, or the chat template.

    This is the prompt part of :func:`encode_examples`; use it to prompt a model for generation.

    Parameters
    ----------
    prompt : str
        The instruction; ``""`` (plain text) gives just ``bos`` (if the tokenizer has one).
    tokenizer : transformers.PreTrainedTokenizerBase
        Any Hugging Face tokenizer.
    template : str
        Format string with a ``{prompt}`` field, used unless the chat template is.
    chat : bool
        Use ``tokenizer.apply_chat_template`` (generation prompt added) when the tokenizer has a
        chat template: on ``history`` if given, else on one user turn holding ``prompt``. The
        rendered template brings its own start tokens, so no ``bos`` is added. Falls back to
        ``template`` on ``prompt`` with a warning when it has none.
    history : sequence of (role, content) pairs
        A conversation's messages before the response (:attr:`Example.history`); ``prompt`` is
        then their plain-text rendering, used without a chat template.

    Returns
    -------
    list of int
    """
    if prompt and chat and tokenizer.chat_template:
        turns = history or (("user", prompt),)
        messages = [{"role": role, "content": content} for role, content in turns]
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as err:  # jinja2's TemplateError: the template refuses these turns
            roles = [role for role, _ in turns]
            raise DataError(
                f"the tokenizer's chat template cannot render messages with roles {roles}: {err}"
            ) from None
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
    if prompt and chat:
        log.warning("data.chat is set but the tokenizer has no chat template; using data.template")
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    if not prompt:
        return bos
    return bos + tokenizer(_format(template, prompt), add_special_tokens=False)["input_ids"]


def encode_examples(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    template: str = "{prompt}\n",
    chat: bool = False,
    numpy: bool = False,
) -> EncodedDataset:
    """Tokenize, label, pad and truncate examples into an :class:`EncodedDataset`.

    Parameters
    ----------
    examples : sequence of Example
        Instruction pairs and plain texts (``prompt == ""``: no template, loss on all tokens).
    tokenizer : transformers.PreTrainedTokenizerBase
        Needs an ``eos_token``; pads with ``pad_token`` (or ``eos_token`` when it has none).
    max_length : int
        Length of every row; longer rows are cut on the right.
    template : str
        Format string with a ``{prompt}`` field for the prompt part.
    chat : bool
        Use the tokenizer's chat template for the prompt part (see :func:`encode_prompt`).
    numpy : bool
        Hold the rows as int64 numpy arrays instead of torch tensors (a device without torch).

    Returns
    -------
    EncodedDataset
        One row per kept example, in order.

    Raises
    ------
    DataError
        The tokenizer has no ``eos_token``, the template is not a valid format string, or
        truncation dropped every example (``data.max_length`` is too small).
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be > 0, got {max_length}")
    eos, pad = _eos_and_pad(tokenizer)
    if chat and not tokenizer.chat_template:
        log.warning("data.chat is set but the tokenizer has no chat template; using data.template")
        chat = False  # warn once, not once per example
    responses = [ex.response for ex in examples]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"] if responses else []
    rows: list[tuple[list[int], list[int]]] = []
    keys = []
    for example, response in zip(examples, response_ids, strict=True):
        prompt = encode_prompt(example.prompt, tokenizer, template, chat, example.history)
        ids = (prompt + response + [eos])[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + response + [eos])[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            continue
        rows.append((ids, labels))
        keys.append(example.key)
    dropped = len(examples) - len(rows)
    if examples and not rows:
        raise DataError(
            f"all {dropped} examples were truncated away: `data.max_length` = {max_length} "
            "leaves no room for any response"
        )
    return _pad(rows, keys, max_length, pad, dropped, numpy)


def _eos_and_pad(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"tokenizer {type(tokenizer).__name__} has no eos_token: cannot end rows")
    pad = tokenizer.pad_token_id
    return eos, eos if pad is None else pad


def _format(template: str, prompt: str) -> str:
    try:
        return template.format(prompt=prompt)
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(
            f"`data.template` {template!r} is not a valid format string: {err}"
        ) from None


def _pad(
    rows: list[tuple[list[int], list[int]]],
    keys: list[str],
    length: int,
    pad: int,
    dropped: int,
    numpy: bool = False,
) -> EncodedDataset:
    input_ids = np.full((len(rows), length), pad, dtype=np.int64)
    attention_mask = np.zeros((len(rows), length), dtype=np.int64)
    labels = np.full((len(rows), length), IGNORE_INDEX, dtype=np.int64)
    for i, (ids, row_labels) in enumerate(rows):
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = row_labels
    if numpy:
        return EncodedDataset(input_ids, attention_mask, labels, keys, dropped)
    import torch

    as_tensor = torch.from_numpy
    return EncodedDataset(
        as_tensor(input_ids), as_tensor(attention_mask), as_tensor(labels), keys, dropped
    )
