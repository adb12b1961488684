"""Evaluation of a LoRA-wrapped causal LM: loss metrics, and what the server and clients record.

- :func:`evaluate`: token-mean loss over response tokens, perplexity, next-token accuracy and
  teacher-forced exact match, in length-sorted batches trimmed to their longest row;
- :func:`global_metrics`: the server's round metrics on the global eval set (with greedy answers
  scored by :mod:`fedft.generation` on instruction data), on every core of the machine;
- :func:`local_metrics`: a client's metrics on its own eval split after local training
  (personalisation), prefixed ``local_``.

What is meaningful depends on the data. Instruction data (examples with a prompt): loss,
perplexity, token accuracy, exact match of greedy answers (normalised: case, punctuation and
spacing ignored) and ROUGE-L F1 against the references. Plain text (no prompt, so no reference
answer): loss, perplexity and next-token accuracy only; whole-text exact match would be 0 always.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import cast

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedft.config import Scenario
from fedft.data import EncodedDataset, Example
from fedft.eval_result import EvalResult

__all__ = [
    "EvalResult",
    "eval_batch_size",
    "eval_threads",
    "evaluate",
    "global_metrics",
    "is_instruction_data",
    "local_metrics",
]


@torch.no_grad()
def evaluate(
    model: PeftModel, dataset: EncodedDataset, batch_size: int, device: torch.device
) -> EvalResult:
    r"""Mean next-token loss over response tokens, its perplexity, token and exact-match accuracy.

    .. math:: \mathcal{L} = \frac{1}{|T|} \sum_{(i, t) \in T} -\log p(y_{i,t} \mid y_{i,<t}),
              \quad \mathrm{ppl} = e^{\mathcal{L}}

    over the labelled positions ``T`` of every row. Rows are right-padded, so a row's outputs do
    not depend on the padding after it: rows are taken in order of length and each batch is cut
    to its longest row, which does the same sums with less padding (same figures up to float
    rounding).
    """
    model.to(device).eval()
    loss_sum, token_count, token_right, exact = 0.0, 0, 0, 0
    lengths = dataset.attention_mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    for start in range(0, len(dataset), batch_size):
        rows = order[start : start + batch_size]
        width = max(int(lengths[rows].max()), 2)  # (batch, width): the batch's longest row
        ids = dataset.input_ids[rows, :width].to(device)
        mask = dataset.attention_mask[rows, :width].to(device)
        labels = dataset.labels[rows, :width].to(device)
        targets = labels[:, 1:]  # (batch, width-1): position t predicts token t+1
        valid = targets != -100
        logits = _response_logits(model, ids, mask, valid)  # (valid tokens, vocab)
        wanted = targets[valid]  # (valid tokens,)
        losses = torch.nn.functional.cross_entropy(logits, wanted, reduction="none")
        loss_sum += float(losses.sum())
        token_count += int(valid.sum())
        hit = logits.argmax(-1) == wanted
        token_right += int(hit.sum())
        row_of = valid.nonzero()[:, 0]  # (valid tokens,): the row each one belongs to
        wrong = torch.bincount(row_of[~hit], minlength=len(rows))
        exact += int((wrong == 0).sum())
    loss = loss_sum / max(token_count, 1)
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        accuracy=exact / max(len(dataset), 1),
        examples=len(dataset),
        token_accuracy=token_right / max(token_count, 1),
    )


_HEAD_ONLY_ON_RESPONSES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
"""Model types whose logits are the output embedding of the decoder's last hidden state, with no
scaling or soft-capping after it: their head runs on the response positions only."""


def _response_logits(
    model: PeftModel, ids: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Float logits at the positions ``valid`` marks (``(batch, width-1)``), ``(n, vocab)``.

    The output head is the largest matrix of a small model (SmolLM2-135M: 576 x 49152, ~a fifth of
    its weights): where the architecture allows, it is applied to the predicting positions only.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    model_type = getattr(base.config, "model_type", "")
    if isinstance(base, PreTrainedModel) and model_type in _HEAD_ONLY_ON_RESPONSES:
        decoder = cast(torch.nn.Module, base.get_decoder())
        head = cast(torch.nn.Module, base.get_output_embeddings())
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, w, h)
        return head(hidden[:, :-1][valid]).float()
    return model(input_ids=ids, attention_mask=mask).logits[:, :-1][valid].float()


def eval_batch_size(scenario: Scenario) -> int:
    """Rows per evaluation batch: ``eval.batch_size``, or 4 x ``train.batch_size``."""
    return scenario.eval.batch_size or 4 * scenario.train.batch_size


def idle_cores(window_s: float = 0.2) -> int:
    """Cores idle now: the idle share of ``/proc/stat``'s CPU time over ``window_s``, times cores.

    At least 1; every core where ``/proc/stat`` cannot be read (not Linux).
    """
    cores = os.cpu_count() or 1

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(window_s)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return cores
    share = (idle1 - idle0) / max(total1 - total0, 1)
    return max(1, min(cores, round(share * cores)))


@contextlib.contextmanager
def eval_threads(threads: int) -> Iterator[int]:
    """Run the block with ``threads`` torch threads, then restore the setting.

    ``threads = 0`` takes the cores idle when the block starts (:func:`idle_cores`): in a
    simulation the clients wait while the server evaluates, so on a machine of its own that is
    every core; on a machine others keep busy, more threads than idle cores run many times
    slower than one (OpenMP threads wait on each other: 8 s instead of 0.13 s for the tiny
    model's eval on 2 cores under load 13, measured).
    """
    before = torch.get_num_threads()
    wanted = threads or idle_cores()
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)


def is_instruction_data(examples: Sequence[Example]) -> bool:
    """Whether the examples have prompts (reference answers to score greedy answers against)."""
    return any(ex.prompt for ex in examples)


def global_metrics(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_set: EncodedDataset,
    examples: Sequence[Example],
    scenario: Scenario,
    server_round: int,
    device: torch.device,
) -> dict[str, float]:
    """The server's metrics of the global model in ``server_round`` (round 0: untrained).

    Returns ``eval_loss``, ``perplexity``, ``token_accuracy``; on instruction data also the
    teacher-forced ``accuracy`` and, in generation rounds (``eval.generate_every``),
    ``exact_match``, ``rouge_l``, ``gen_examples`` and ``gen_s`` over the first
    ``eval.max_generate_examples`` examples. ``eval_s`` is the whole evaluation's wall time.
    """
    cfg = scenario.eval
    started = time.perf_counter()
    with eval_threads(cfg.threads):
        result = evaluate(model, eval_set, eval_batch_size(scenario), device)
        metrics = _loss_metrics(result, is_instruction_data(examples))
        metrics["perplexity"] = result.perplexity
        if cfg.generates_in(server_round, scenario.federation.num_rounds):
            metrics |= _generation(model, tokenizer, examples, scenario, cfg.max_generate_examples)
    metrics["eval_s"] = time.perf_counter() - started
    return metrics


def local_metrics(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_set: EncodedDataset,
    examples: Sequence[Example],
    scenario: Scenario,
    server_round: int,
    device: torch.device,
) -> dict[str, float]:
    """A client's metrics of its trained model on its own eval split, keys prefixed ``local_``.

    ``local_eval_loss`` and ``local_token_accuracy``; on instruction data, in generation rounds,
    ``local_exact_match``, ``local_rouge_l`` and ``local_gen_examples`` over the first
    ``eval.client_generate_examples`` examples. Empty when the split is empty.
    """
    if not len(eval_set):
        return {}
    result = evaluate(model, eval_set, eval_batch_size(scenario), device)
    metrics = {"eval_loss": result.loss, "token_accuracy": result.token_accuracy}
    limit = scenario.eval.client_generate_examples
    if scenario.eval.generates_in(server_round, scenario.federation.num_rounds):
        metrics |= _generation(model, tokenizer, examples, scenario, limit)
    metrics.pop("gen_s", None)
    return {f"local_{k}": v for k, v in metrics.items()}


def _loss_metrics(result: EvalResult, instruction: bool) -> dict[str, float]:
    metrics = {"eval_loss": result.loss, "token_accuracy": result.token_accuracy}
    if instruction:  # whole-text exact match of plain text is 0 always: not recorded
        metrics["accuracy"] = result.accuracy
    return metrics


def _generation(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    scenario: Scenario,
    limit: int,
) -> dict[str, float]:
    from fedft.generation import score_generation  # rouge-score only where answers are scored

    if limit == 0 or not is_instruction_data(examples):
        return {}
    data, cfg = scenario.data, scenario.eval
    result = score_generation(
        model,
        tokenizer,
        examples,
        limit=limit,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=eval_batch_size(scenario),
        template=data.template,
        chat=data.chat,
        max_prompt_tokens=data.max_length - 1,
        timeout_s=cfg.generate_timeout_s,
    )
    if result.examples == 0:
        return {}
    return {
        "exact_match": result.exact_match,
        "rouge_l": result.rouge_l,
        "gen_examples": float(result.examples),
        "gen_s": result.seconds,
    }
