"""Local first-order training and evaluation of a LoRA-wrapped causal LM."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from peft import PeftModel

from fedft.config import TrainConfig
from fedft.data import EncodedDataset


@dataclass(frozen=True)
class TrainResult:
    """What one client's local training produced."""

    loss: float
    steps: int
    examples: int


@dataclass(frozen=True)
class EvalResult:
    """Token-level loss, perplexity and exact-match accuracy on a dataset."""

    loss: float
    perplexity: float
    accuracy: float
    examples: int


def train_local(
    model: PeftModel,
    dataset: EncodedDataset,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    lr: float | None = None,
) -> TrainResult:
    """Run ``cfg.local_steps`` AdamW steps on the trainable (LoRA) parameters.

    The optimizer is created afresh each round (FedIT): only the factors carry over. ``lr`` is the
    round's learning rate (:func:`fedft.schedule.round_lr`); ``cfg.lr`` when not given.
    """
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    rate = cfg.lr if lr is None else lr
    optimizer = torch.optim.AdamW(params, lr=rate, weight_decay=cfg.weight_decay)
    total, steps = 0.0, 0
    for batch in dataset.batches(cfg.batch_size, seed=seed, steps=cfg.local_steps):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        total += float(loss.detach())
        steps += 1
    return TrainResult(loss=total / max(steps, 1), steps=steps, examples=len(dataset))


@torch.no_grad()
def evaluate(
    model: PeftModel, dataset: EncodedDataset, batch_size: int, device: torch.device
) -> EvalResult:
    """Mean next-token loss over response tokens, its perplexity, and exact-match accuracy.

    An example counts as exact if the argmax prediction is right at every response position,
    which under teacher forcing equals greedy decoding producing exactly the response.
    """
    model.to(device).eval()
    loss_sum, token_count, exact = 0.0, 0, 0
    for start in range(0, len(dataset), batch_size):
        ids = dataset.input_ids[start : start + batch_size].to(device)
        mask = dataset.attention_mask[start : start + batch_size].to(device)
        labels = dataset.labels[start : start + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = labels[:, 1:]  # (batch, L-1): position t predicts token t+1
        valid = targets != -100
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets.clamp(min=0), reduction="none"
        )
        loss_sum += float((losses * valid).sum())
        token_count += int(valid.sum())
        correct = (logits.argmax(-1) == targets) | ~valid
        exact += int(correct.all(dim=1).sum())
    loss = loss_sum / max(token_count, 1)
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        accuracy=exact / max(len(dataset), 1),
        examples=len(dataset),
    )
