"""A user's own model folder and chat data set folder, in a real simulation, offline.

The model is a local Hugging Face folder (config.json, model.safetensors, a tokenizer with a
ChatML-style chat template), the data a `datasets` folder written with `save_to_disk` whose
records are chat messages; `data.chat = true` renders them with the model's template.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from fedft.config import ModelConfig
from fedft.models import tiny_model

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_simulation_on_a_chat_dataset_folder_and_a_model_folder(tmp_path):
    model, tokenizer = tiny_model(ModelConfig(), 0)
    tokenizer.chat_template = CHATML
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"{a}+{b}?"},
                {"role": "assistant", "content": str(a + b)},
            ],
            "topic": "small" if a + b < 10 else "big",
        }
        for a in range(8)
        for b in range(8)
    ]
    datasets.Dataset.from_list(chats).save_to_disk(tmp_path / "chats")
    settings = [
        "model.source='hf'",
        f"model.path='{tmp_path / 'model'}'",
        "data.source='hf'",
        f"data.path='{tmp_path / 'chats'}'",
        "data.chat=true",
        "data.key_field='topic'",
        "data.max_length=48",
        "data.global_eval_size=8",
        "federation.num_clients=2",
        "federation.num_rounds=1",
        "train.local_steps=2",
    ]
    args = [sys.executable, "-m", "fedft.cli", "simulate", str(ROOT / "simulations/default.toml")]
    for setting in settings:
        args += ["--set", setting]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FEDFT_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "run"
    proc = subprocess.run(
        [*args, "--out", str(out)], capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "no chat template" not in proc.stderr  # the model folder's template was used
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if r["kind"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert sorted(r["partition"] for r in rows if r["kind"] == "client") == [0, 1]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
