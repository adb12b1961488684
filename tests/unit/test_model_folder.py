"""Any local Hugging Face causal-LM folder is a base model, offline, with its own chat template."""

import pytest
import torch

from fedft.config import ModelConfig
from fedft.data import IGNORE_INDEX, Example, encode_examples
from fedft.errors import ConfigError
from fedft.model_folder import check_model_folder
from fedft.models import load_base, tiny_model

TINY = ModelConfig()
CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def user_folder(tmp_path):
    """What a user has: config.json, model.safetensors and a tokenizer with a chat template."""
    model, tokenizer = tiny_model(TINY, 0)
    tokenizer.chat_template = CHATML
    folder = tmp_path / "my-model"
    model.save_pretrained(folder)  # safetensors
    tokenizer.save_pretrained(folder)
    return folder, model


def test_a_users_folder_loads_offline_with_its_chat_template(user_folder, monkeypatch):
    folder, original = user_folder
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_base(ModelConfig(source="hf", path=str(folder)), seed=1)
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(weight, original.model.layers[0].self_attn.q_proj.weight)
    assert tokenizer.chat_template == CHATML
    history = (("user", "Hi"),)
    rows = encode_examples([Example("User: Hi", "Yo", "", history)], tokenizer, 48, chat=True)
    prompt_len = len(tokenizer("<|user|>Hi\n<|assistant|>", add_special_tokens=False)["input_ids"])
    labels = rows.labels[0].tolist()
    assert set(labels[:prompt_len]) == {IGNORE_INDEX}
    assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) == "Yo<eos>"
    with torch.no_grad():
        out = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask)
    assert out.logits.shape[:2] == rows.input_ids.shape


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("config.json", r"no Hugging Face model \(config.json\)"),
        ("model.safetensors", "no weights"),
        ("tokenizer.json tokenizer_config.json", "no tokenizer"),
    ],
)
def test_an_incomplete_folder_is_one_error_naming_what_is_missing(user_folder, remove, named):
    folder, _ = user_folder
    for name in remove.split():
        (folder / name).unlink()
    with pytest.raises(ConfigError, match=f"model.path.*{named}"):
        check_model_folder(folder)
    with pytest.raises(ConfigError, match=named):
        load_base(ModelConfig(source="hf", path=str(folder)), seed=0)
