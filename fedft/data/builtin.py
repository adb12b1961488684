"""The built-in task: questions about short random strings, for a tiny character-level model.

Each example asks one question about a random string of 3 to 5 letters from ``"abcdef"``; the
answer is one character::

    prompt "min cafe"   response "a"      smallest letter
    prompt "max cafe"   response "f"      largest letter
    prompt "fst cafe"   response "c"      first letter
    prompt "lst cafe"   response "e"      last letter
    prompt "len cafe"   response "4"      length

The question names are the example keys (:data:`BUILTIN_KEYS`), so a ``natural`` partition gives
each client one question and a Dirichlet partition skews how often each client sees each. A row is
at most 1 + 9 + 1 prompt tokens and 1 + 1 response tokens with a character-level tokenizer.

Why one-character answers: a randomly initialised Llama-style model (hidden 64, 2 layers,
``initializer_range`` 0.2) with LoRA on the attention projections (rank 8, lr 3e-3, batch 8)
learns multi-character answers (copy, reverse, sort the string) only down to the letter
frequencies and matched almost no whole response even after 400 steps. On these questions, over five
seeds, the eval loss falls from about 6 to about 1 and exact-match accuracy reaches 0.3-0.5 within
100 steps (about what answering each question's most frequent answer gives, ~0.3: the priors come
first), then 0.7-0.8 after 400 steps, well above it. With the default ``initializer_range`` (0.02)
the frozen random ``lm_head`` caps the logits, so the loss barely moves (4.6 to 3.7) although the
accuracy rises similarly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedft.data.examples import DataError, Example

__all__ = ["BUILTIN_ALPHABET", "BUILTIN_KEYS", "builtin_task"]

BUILTIN_ALPHABET = "abcdef"
"""Letters of the operands."""

_QUESTIONS: dict[str, Callable[[str], str]] = {
    "min": min,
    "max": max,
    "fst": lambda s: s[0],
    "lst": lambda s: s[-1],
    "len": lambda s: str(len(s)),
}

BUILTIN_KEYS: tuple[str, ...] = tuple(_QUESTIONS)
"""The questions, which are also the example keys: smallest, largest, first and last letter, and
the length."""

_MIN_LEN, _MAX_LEN = 3, 5


def builtin_task(num_examples: int, seed: int) -> list[Example]:
    """Generate the built-in task's examples, the questions in turn.

    Parameters
    ----------
    num_examples : int
        How many examples (> 0); example ``i`` asks question ``BUILTIN_KEYS[i % 5]``, so the keys
        are balanced.
    seed : int
        Seeds ``numpy.random.default_rng``; the same seed gives the same list.

    Returns
    -------
    list of Example
        ``Example(prompt="lst cafe", response="e", key="lst")`` and the like.
    """
    if num_examples <= 0:
        raise DataError(f"builtin task: `data.num_examples` must be > 0, got {num_examples}")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(_MIN_LEN, _MAX_LEN + 1, size=num_examples)
    letters = rng.integers(0, len(BUILTIN_ALPHABET), size=(num_examples, _MAX_LEN))
    examples = []
    for i in range(num_examples):
        key = BUILTIN_KEYS[i % len(BUILTIN_KEYS)]
        operand = "".join(BUILTIN_ALPHABET[j] for j in letters[i, : lengths[i]])
        examples.append(Example(f"{key} {operand}", _QUESTIONS[key](operand), key))
    return examples
