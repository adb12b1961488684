"""Greedy answers to instruction prompts, scored against the references: exact match and ROUGE-L.

The FlowerTune leaderboard and OpenFedLLM judge instruction tuning by what the model answers,
not only by its loss. Here every example's prompt is encoded exactly as training encodes it
(:func:`fedft.data.encode_prompt`: the template, or the tokenizer's chat template), the model
decodes greedily (``do_sample=False``) in left-padded batches until ``eos`` or
``max_new_tokens``, and each answer is scored against the example's response:

- exact match: 1 when the answer equals the reference after :func:`normalize` (case,
  punctuation and runs of whitespace ignored, as SQuAD's normalisation without its English
  articles rule), else 0;
- ROUGE-L (Lin, 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"): the F1 of the
  longest common subsequence of words, with precision ``P = LCS / |answer|`` and recall
  ``R = LCS / |reference|``, ``F = 2PR / (P + R)``, computed by Google's ``rouge-score``. Its
  default tokenizer keeps ASCII letters and digits only (an answer in another script scores 0),
  so words here are Unicode letter-and-digit runs, lower-cased: the same tokens on ASCII text.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from rouge_score import rouge_scorer, tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerBase

from fedft.data import Example, encode_prompt

__all__ = ["GenerationResult", "exact_match", "greedy_answers", "normalize", "rouge_l"]

_WORD = re.compile(r"[^\W_]+")


class _WordTokenizer(tokenizers.Tokenizer):
    """rouge-score's tokenizer on Unicode text: lower-cased runs of letters and digits."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_WordTokenizer())


def normalize(text: str) -> str:
    """Lower-case, drop punctuation (Unicode category P*), collapse whitespace."""
    kept = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return " ".join(kept.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when ``prediction`` equals ``reference`` after :func:`normalize`, else 0.0."""
    return float(normalize(prediction) == normalize(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` against ``reference`` (rouge-score; 0 if either is empty)."""
    return float(_SCORER.score(reference, prediction)["rougeL"].fmeasure)


@dataclass(frozen=True)
class GenerationResult:
    """Means over the scored examples, how many were scored, the pass's time and the answers."""

    exact_match: float
    rouge_l: float
    examples: int
    seconds: float
    answers: tuple[str, ...] = ()


@torch.no_grad()
def greedy_answers(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    deadline: float = float("inf"),
) -> list[str | None]:
    """Greedy continuations of token-id ``prompts``, decoded, in the prompts' order.

    Prompts are batched by length and left-padded (attention mask 0 on the padding: Hugging Face
    generation derives positions from the mask); a continuation ends at the first ``eos``. No new
    batch starts after ``deadline`` (``time.perf_counter()``): prompts left unanswered then
    (the longest ones) get ``None``.
    """
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        if time.perf_counter() > deadline:
            break
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (batch, width), left pad
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            n = len(prompts[i])
            ids[j, width - n :] = torch.as_tensor(list(prompts[i]), dtype=torch.long)
            mask[j, width - n :] = 1
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
        for j, i in enumerate(rows):
            new = out[j, width:].tolist()  # (new tokens,)
            if eos in new:
                new = new[: new.index(eos)]
            answers[i] = str(tokenizer.decode(new, skip_special_tokens=True)).strip()
    return answers


def score_generation(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    limit: int,
    max_new_tokens: int,
    batch_size: int,
    template: str = "{prompt}\n",
    chat: bool = False,
    max_prompt_tokens: int = 0,
    timeout_s: float = 0.0,
) -> GenerationResult:
    """Score greedy answers to the first ``limit`` prompted examples against their responses.

    Examples without a prompt, or whose encoded prompt exceeds ``max_prompt_tokens`` (when > 0:
    training cuts such rows away), are skipped before ``limit`` is applied, so every strategy of
    a comparison scores the same examples. ``timeout_s`` > 0 stops starting new batches after
    that many seconds.
    """
    started = time.perf_counter()
    chosen: list[tuple[Example, list[int]]] = []
    for ex in examples:
        if len(chosen) == limit:
            break
        if not ex.prompt:
            continue
        ids = encode_prompt(ex.prompt, tokenizer, template, chat, ex.history)
        if max_prompt_tokens and len(ids) > max_prompt_tokens:
            continue
        chosen.append((ex, ids))
    deadline = started + timeout_s if timeout_s else float("inf")
    prompts = [ids for _, ids in chosen]
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size, deadline)
    scored = [i for i, answer in enumerate(answers) if answer is not None]
    refs = [chosen[i][0].response for i in scored]
    preds = [str(answers[i]) for i in scored]
    n = len(preds)
    return GenerationResult(
        exact_match=sum(map(exact_match, preds, refs)) / n if n else float("nan"),
        rouge_l=sum(map(rouge_l, preds, refs)) / n if n else float("nan"),
        examples=n,
        seconds=time.perf_counter() - started,
        answers=tuple(preds),
    )
