"""Local first-order training of a LoRA-wrapped causal LM (evaluation: :mod:`fedft.evaluation`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import PeftModel

from fedft.config import TrainConfig
from fedft.data import EncodedDataset
from fedft.evaluation import EvalResult, evaluate  # here before fedft.evaluation existed

__all__ = ["EvalResult", "TrainResult", "evaluate", "train_local"]


@dataclass(frozen=True)
class TrainResult:
    """What one client's local training produced."""

    loss: float
    steps: int
    examples: int

    def metrics(self, train_s: float) -> dict[str, float]:
        """The reply's training metrics (``num-examples`` is what Flower's FedAvg weighs by)."""
        examples = float(self.examples)
        return {
            "train_loss": self.loss,
            "num-examples": examples,
            "examples": examples,
            "steps": float(self.steps),
            "train_s": train_s,
        }


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
