"""An ONNX Runtime device needs no torch: its import path, its tokenizer, its rounds.

The subprocesses here install a ``sys.meta_path`` finder that makes torch, transformers, peft,
bitsandbytes and safetensors unimportable (as on a device with only the ``device`` extra), then
import and run what an ``ort`` node runs.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from fedft.config import load_scenario
from fedft.data.encode import char_tokenizer
from fedft.edge.tokenizer import BundleTokenizer
from fedft.task import encode_partition

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "transformers", "peft", "bitsandbytes", "safetensors")
BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


def run_without_torch(code, timeout=600, **env):
    """Run ``code`` in a fresh interpreter where torch & co. cannot be imported; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_blocker_blocks():
    out = run_without_torch(
        """
        try:
            import torch
        except ModuleNotFoundError as err:
            print("blocked", err.name)
        """
    )
    assert out.strip() == "blocked torch"


def test_an_ort_node_imports_no_torch():
    out = run_without_torch(
        """
        import json, sys
        import clients.app
        from clients.runtimes import runtime_for
        from fedft.cli import main
        first, zo = runtime_for("ort", False), runtime_for("ort", True)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("torch", "transformers", "peft", "bitsandbytes"))
        print(json.dumps([type(first).__name__, type(zo).__name__, heavy]))
        """
    )
    assert json.loads(out.splitlines()[-1]) == ["OrtLora", "OrtZo", []]


def test_fedft_client_parses_its_options_without_torch():
    out = run_without_torch(
        """
        from fedft.cli import main
        try:
            main(["client", "--help"])
        except SystemExit as exit:
            print("exit", exit.code)
        """
    )
    assert "--backend" in out and out.splitlines()[-1] == "exit 0"


def test_a_torch_runtime_on_such_a_device_fails_at_its_import():  # (the test can fail)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKER + "from clients.runtimes import runtime_for\nruntime_for('torch', False)\n",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr


def tokenizer_folders(tmp_path):
    tiny = tmp_path / "tiny"
    char_tokenizer().save_pretrained(tiny)
    folders = [tiny]
    smollm2 = sorted((Path.home() / ".cache" / "fedft" / "models").glob("SmolLM2-135M*"))
    return folders + smollm2[:1]


def test_the_bundle_tokenizer_encodes_as_transformers(tmp_path):
    scenario = load_scenario(ROOT / "simulations" / "default.toml")
    texts = ["min cafe\n", "héllo wörld <eos> <|im_end|>", "  two  spaces\tand tab", ""]
    for folder in tokenizer_folders(tmp_path):
        light, full = BundleTokenizer(folder), AutoTokenizer.from_pretrained(folder)
        assert (light.bos_token_id, light.eos_token_id, light.pad_token_id) == (
            full.bos_token_id,
            full.eos_token_id,
            full.pad_token_id,
        ), folder
        assert light(texts)["input_ids"] == full(texts, add_special_tokens=False)["input_ids"]
        assert light(texts[1])["input_ids"] == full(texts[1], add_special_tokens=False)["input_ids"]
        for partition in (0, 3):
            got = encode_partition(scenario, partition, light, numpy=True)
            want = encode_partition(scenario, partition, full)
            for g, w in zip(got, want, strict=True):
                assert isinstance(g.input_ids, np.ndarray)
                for field in ("input_ids", "attention_mask", "labels"):
                    np.testing.assert_array_equal(getattr(g, field), getattr(w, field).numpy())
                assert g.keys == w.keys
                batch = next(g.batches(4, seed=7, steps=1))
                torch_batch = next(w.batches(4, seed=7, steps=1))
                for key, value in batch.items():
                    np.testing.assert_array_equal(value, torch_batch[key].numpy())


def test_the_bundle_tokenizer_refuses_a_chat_template(tmp_path):
    folders = [f for f in tokenizer_folders(tmp_path) if (f / "chat_template.jinja").is_file()]
    if not folders:
        pytest.skip("no cached tokenizer with a chat template (SmolLM2: make smollm2)")
    light = BundleTokenizer(folders[0])
    assert light.chat_template
    with pytest.raises(Exception, match="`data.chat`"):
        light.apply_chat_template([{"role": "user", "content": "hi"}])


ROUNDS = """
import json, os
import numpy as np
from clients.runtimes.ort_lora import OrtLora
from clients.runtimes.ort_zo import OrtZo
from fedft.config import load_scenario
from fedft.edge.bundle import read_bundle
from fedft.factors import factors_digest

start = read_bundle(os.environ["FEDFT_EDGE_BUNDLE"]).initial_factors()
start = {k: v + np.float32(0.01) * np.cos(np.arange(v.size, dtype=np.float32)).reshape(v.shape)
         for k, v in start.items()}  # nonzero B: every LoRA path counts
first = load_scenario("simulations/default.toml", ["train.local_steps=3"])
lora = OrtLora().train_round(first, 0, start, 1, 0)
zo = load_scenario("simulations/default.toml", ["federation.strategy='zo'", "zo.local_steps=4"])
records = OrtZo().train_round(zo, 1, start, 2, 1)
print(json.dumps({
    "lora": {k: np.asarray(v).ravel().tolist() for k, v in lora.factors.items()},
    "lora_loss": lora.metrics["train_loss"],
    "update": lora.content(first, 0)["arrays"].count_bytes(),
    "zo": records.payload.hex(), "zo_end": factors_digest(records.factors),
    "zo_start": records.metrics["start_digest"],
}))
"""


@pytest.mark.integration
def test_ort_rounds_without_torch_give_the_bits_they_give_with_it(edge_bundle):
    env = {"FEDFT_EDGE_BUNDLE": str(edge_bundle.path)}
    done = subprocess.run(
        [sys.executable, "-c", ROUNDS],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with_torch = json.loads(done.stdout.splitlines()[-1])
    without = json.loads(run_without_torch(ROUNDS, timeout=900, **env).splitlines()[-1])
    # ONNX Runtime's first-order training is not bit-reproducible from one process to the next
    # (the same round twice in one environment gave two factor digests), so its factors are
    # compared within float32 round-off; everything else (zo records, digests, sizes) exactly.
    lora_with, lora_without = with_torch.pop("lora"), without.pop("lora")
    assert lora_with.keys() == lora_without.keys()
    for name, values in lora_with.items():
        np.testing.assert_allclose(lora_without[name], values, rtol=1e-4, atol=1e-6, err_msg=name)
    assert without == with_torch
    assert with_torch["lora_loss"] > 0 and len(with_torch["zo"]) > 0


@pytest.mark.integration
def test_the_bundles_initial_factors_are_the_torch_clients(edge_bundle, default_scenario):
    from clients.runtimes.torch_lora import client_model
    from fedft.factors import factors_digest
    from fedft.zo.trainable import initial_state

    model, _ = client_model(default_scenario, 0)
    torch_start = initial_state(model, ())
    assert factors_digest(edge_bundle.initial_factors()) == factors_digest(torch_start)


def test_device_requirements_are_the_device_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra = project["project"]["optional-dependencies"]["device"]
    lines = (ROOT / "clients" / "device-requirements.txt").read_text(encoding="utf-8").splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == extra
    heavy = ("torch", "transformers", "peft", "bitsandbytes", "onnxruntime ")
    assert not [r for r in extra if r.startswith(heavy) or r.split(";")[0] == "onnxruntime"]
