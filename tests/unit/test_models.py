import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedft.adapters import get_factors, save_adapter, set_factors_
from fedft.config import LoraConfig, ModelConfig
from fedft.errors import ConfigError, ReplyError
from fedft.models import load_base, load_peft_model, tiny_model, wrap_lora

TINY = ModelConfig()
LORA = LoraConfig(rank=4, target_modules=("q_proj", "v_proj", "lm_head"))


def test_tiny_model_is_seeded():
    a, _ = tiny_model(TINY, seed=1)
    b, _ = tiny_model(TINY, seed=1)
    c, _ = tiny_model(TINY, seed=2)
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_peft_model_is_built_once_per_process():
    first, _ = load_peft_model(TINY, LORA, 0)
    again, _ = load_peft_model(TINY, LORA, 0)
    other, _ = load_peft_model(TINY, LORA, 1)
    assert first is again and first is not other


def test_factor_round_trip_and_names():
    model, _ = load_peft_model(TINY, LORA, 0)
    factors = get_factors(model)
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in factors)
    assert not any("base_layer" in k for k in factors)  # the frozen lm_head is not state
    new = {k: torch.randn_like(v) for k, v in factors.items()}
    set_factors_(model, new)
    assert all(torch.equal(get_factors(model)[k], v) for k, v in new.items())
    bad = dict(new)
    bad.pop(next(iter(bad)))
    with pytest.raises(ReplyError, match="missing tensor"):
        set_factors_(model, bad)


def test_missing_target_module_names_the_module():
    base, _ = tiny_model(TINY, 0)
    with pytest.raises(ConfigError, match="no_such_proj"):
        wrap_lora(base, LoraConfig(target_modules=("q_proj", "no_such_proj")))


def test_hf_folder_source_and_adapter_round_trip(tmp_path):
    base, tokenizer = tiny_model(TINY, 0)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    hf = ModelConfig(source="hf", path=str(tmp_path / "base"))
    loaded, tok = load_base(hf, seed=123)  # the seed does not matter for files
    assert torch.equal(
        loaded.model.layers[1].mlp.up_proj.weight, base.model.layers[1].mlp.up_proj.weight
    )
    assert tok.pad_token_id is not None
    model = wrap_lora(loaded, LORA)
    factors = {k: torch.randn_like(v) for k, v in get_factors(model).items()}
    save_adapter(model, factors, tmp_path / "adapter", str(tmp_path / "base"))
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    got = get_factors(reloaded)
    assert set(got) == set(factors)
    assert all(torch.equal(got[k], v) for k, v in factors.items())
