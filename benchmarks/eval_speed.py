"""The server's evaluation before and after batching by length and using the idle cores.

Run from the repository root (not a test; prints measured times and ratios side by side):

    .venv/bin/python benchmarks/eval_speed.py                          # SmolLM2 chatterbot
    .venv/bin/python benchmarks/eval_speed.py --scenario simulations/default.toml --examples 128

The scenario's global eval set (its first ``--examples`` rows) is scored three ways, each
``--repeats`` times (alternating, since the machine is shared), keeping each one's best time:

- before: the evaluation as it was (every batch padded to ``data.max_length``, one thread, 4 x
  ``train.batch_size`` rows a batch), reproduced here as :func:`evaluate_fixed_width`;
- after, 1 thread: :func:`fedft.evaluation.evaluate` (length-sorted batches cut to their longest
  row);
- after, N threads: the same with ``--threads`` (default: every core) torch threads.

It also times one greedy generation pass (:func:`fedft.generation.score_generation`) with the
scenario's ``eval`` caps, and prints the loss of both evaluations (equal up to float rounding).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@torch.no_grad()
def evaluate_fixed_width(model: Any, dataset: Any, batch_size: int) -> float:
    """The loss as ``fedft.train.evaluate`` computed it before: full-width batches in order."""
    model.eval()
    loss_sum, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        ids = dataset.input_ids[start : start + batch_size]
        mask = dataset.attention_mask[start : start + batch_size]
        labels = dataset.labels[start : start + batch_size]
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = labels[:, 1:]
        valid = targets != -100
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets.clamp(min=0), reduction="none"
        )
        loss_sum += float((losses * valid).sum())
        count += int(valid.sum())
    return loss_sum / max(count, 1)


def best_time(fn: Callable[[], float], threads: int, repeats: int) -> tuple[float, float]:
    torch.set_num_threads(threads)
    best, value = math.inf, float("nan")
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="simulations/smollm2_chatterbot.toml")
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    from fedft.config import load_scenario
    from fedft.data import encode_examples
    from fedft.evaluation import eval_batch_size, evaluate, idle_cores
    from fedft.generation import score_generation
    from fedft.models import load_peft_model
    from fedft.task import federated_data

    scenario = load_scenario(args.scenario)
    data = scenario.data
    model, tokenizer = load_peft_model(scenario.model, scenario.lora, scenario.run.seed)
    examples = list(federated_data(scenario).global_eval)[: args.examples]
    encoded = encode_examples(examples, tokenizer, data.max_length, data.template, data.chat)
    batch = eval_batch_size(scenario)
    cpu = torch.device("cpu")
    filled = float(encoded.attention_mask.float().mean())
    print(
        f"{args.scenario}: {len(encoded)} eval rows of {data.max_length} tokens "
        f"({filled:.0%} of them real tokens), batch {batch}; {os.cpu_count()} cores, "
        f"{idle_cores()} idle now"
    )
    runs: dict[str, list[tuple[float, float]]] = {
        "before (fixed width, 1 thread)": [],
        "after (1 thread)": [],
        "after (N threads)": [],
    }
    for _ in range(args.repeats):  # alternate: the machine is shared
        runs["before (fixed width, 1 thread)"].append(
            best_time(lambda: evaluate_fixed_width(model, encoded, batch), 1, 1)
        )
        runs["after (1 thread)"].append(
            best_time(lambda: evaluate(model, encoded, batch, cpu).loss, 1, 1)
        )
        runs["after (N threads)"].append(
            best_time(lambda: evaluate(model, encoded, batch, cpu).loss, args.threads, 1)
        )
    before = min(t for t, _ in runs["before (fixed width, 1 thread)"])
    print(f"{'evaluation':<34} {'best s':>8} {'loss':>10} {'speed-up':>9}")
    for name, results in runs.items():
        seconds, loss = min(results)
        label = name.replace("N threads", f"{args.threads} threads")
        print(f"{label:<34} {seconds:8.2f} {loss:10.5f} {before / seconds:8.1f}x")
    cfg = scenario.eval
    for threads in (1, args.threads):
        torch.set_num_threads(threads)
        result = score_generation(
            model,
            tokenizer,
            examples,
            limit=cfg.max_generate_examples,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=batch,
            template=data.template,
            chat=data.chat,
            max_prompt_tokens=data.max_length - 1,
        )
        print(
            f"greedy answers, {threads} thread(s): {result.examples} examples x <= "
            f"{cfg.max_new_tokens} new tokens in {result.seconds:.2f} s "
            f"(exact match {result.exact_match:.3f}, ROUGE-L {result.rouge_l:.3f})"
        )


if __name__ == "__main__":
    main()
