"""What an evaluation returns, whatever the runtime (torch, ONNX Runtime): no torch needed here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalResult:
    """Token-level loss, perplexity and exact-match accuracy on a dataset.

    ``accuracy`` is teacher-forced whole-response exact match (every response position's argmax
    is right: greedy decoding would produce exactly the response); ``token_accuracy`` the share
    of response tokens whose argmax is right.
    """

    loss: float
    perplexity: float
    accuracy: float
    examples: int
    token_accuracy: float = float("nan")
