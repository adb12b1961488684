"""FLoRA's merged base in a live peft model: W_0 + s B_m A_m, and back to W_0 exactly."""

import torch

from fedft.adapters import get_factors, set_factors_
from fedft.config import LoraConfig, ModelConfig
from fedft.merged_base import merge_delta_
from fedft.models import load_base, wrap_lora


def tiny(rank=4):
    base, _ = load_base(ModelConfig(), seed=0)
    return wrap_lora(base, LoraConfig(rank=rank, alpha=8.0))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_merged_update_acts_as_the_same_lora_adapter_and_unmerges_exactly():
    model = tiny()
    start = get_factors(model)
    pristine = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    gen = torch.Generator().manual_seed(0)
    trained = {k: 0.2 * torch.randn(v.shape, generator=gen) for k, v in start.items()}
    ids = torch.randint(0, 50, (2, 12), generator=gen)
    set_factors_(model, trained)
    as_adapter = logits(model, ids)
    # the same update merged into the base, the adapter's B zeroed
    merge_delta_(model, {k: v.double() for k, v in trained.items()})
    set_factors_(
        model, {k: v if "lora_A" in k else torch.zeros_like(v) for k, v in trained.items()}
    )
    torch.testing.assert_close(logits(model, ids), as_adapter, rtol=1e-4, atol=1e-4)
    merge_delta_(model, {})
    for name, param in model.named_parameters():
        if "base_layer" in name:
            assert torch.equal(param, pristine[name])


def test_merging_twice_starts_from_the_pristine_base_not_the_last_merge():
    model = tiny()
    start = get_factors(model)
    delta = {k: torch.ones_like(v, dtype=torch.float64) for k, v in start.items()}
    merge_delta_(model, delta)
    once = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    merge_delta_(model, delta)
    for name, param in model.named_parameters():
        if "base_layer" in name:
            assert torch.equal(param, once[name])
