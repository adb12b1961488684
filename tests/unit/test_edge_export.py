"""Edge bundles: what the export writes, the graphs it patches, and the bundles it refuses.

The tiny model is exported once per test session (the bundle folder is shared with
test_ort_parity.py through the session's base temp folder).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from transformers import AutoTokenizer

from fedft.adapters import get_factors
from fedft.config import load_scenario
from fedft.data import encode_examples
from fedft.edge import cli as edge_cli
from fedft.edge.bundle import (
    CHECKPOINT,
    FORWARD_MODEL,
    MANIFEST,
    OPTIMIZER_MODEL,
    TOKENIZER,
    TRAINING_MODEL,
    bundle_config,
    bundle_key,
    open_bundle,
    read_bundle,
)
from fedft.edge.cache import default_bundle_dir, ensure_bundle
from fedft.edge.errors import (
    BundleMismatchError,
    EdgeError,
    ModelTooLargeError,
    TrainingRuntimeMissingError,
    training_runtime,
)
from fedft.edge.export import build_bundle
from fedft.edge.graph import add_causal_lm_loss, cap_ir_version
from fedft.edge.ort_train import OrtTrainer
from fedft.errors import FedftError
from fedft.models import load_base, wrap_lora
from fedft.task import federated_data

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "simulations" / "default.toml"
# a 1-layer, 16-wide model: cheap enough to export a second time through the command line
SMALL = [
    "model.tiny.hidden_size=16",
    "model.tiny.num_layers=1",
    "model.tiny.intermediate_size=32",
    "lora.rank=2",
    "lora.target_modules=['q_proj','v_proj']",
]


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(DEFAULT)


@pytest.fixture(scope="module")
def bundle(edge_bundle):  # tests/conftest.py: the default scenario's, exported once a session
    return edge_bundle


def run_cli(*argv):
    parser = argparse.ArgumentParser(prog="fedft")
    edge_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return edge_cli.run(parser.parse_args(list(argv)))


# ---- what a bundle holds ---------------------------------------------------------------------


@pytest.mark.integration
def test_manifest_records_config_hash_and_the_torch_factor_layout(bundle, scenario):
    manifest = bundle.manifest
    assert manifest["config"] == bundle_config(scenario)
    assert bundle.key == bundle_key(bundle_config(scenario))
    model = wrap_lora(load_base(scenario.model, scenario.run.seed)[0], scenario.lora)
    factors = get_factors(model)  # the torch client's names and shapes: the wire format
    assert bundle.factor_layout == [(n, tuple(factors[n].shape)) for n in sorted(factors)]
    assert manifest["config"]["lora"]["rank"] == 8 and manifest["config"]["run"]["seed"] == 0
    on_disk = {
        f.relative_to(bundle.path).as_posix(): f.stat().st_size
        for f in bundle.path.rglob("*")
        if f.is_file() and f.name != MANIFEST
    }
    assert manifest["files"] == on_disk


@pytest.mark.integration
def test_checkpoint_trains_exactly_the_lora_factors(bundle):
    api = training_runtime().api
    state = api.CheckpointState.load_checkpoint(bundle.file(CHECKPOINT))
    params = dict(state.parameters)
    trainable = sorted(name for name, p in params.items() if p.requires_grad)
    assert trainable == [name for name, _ in bundle.factor_layout]
    frozen = [name for name, p in params.items() if not p.requires_grad]
    assert "base_model.model.model.embed_tokens.weight" in frozen
    assert all("lora_" not in name for name in frozen)


@pytest.mark.integration
def test_graph_inputs_and_outputs(bundle):
    train = onnx.load(bundle.file(TRAINING_MODEL), load_external_data=False)
    assert [i.name for i in train.graph.input][:3] == ["input_ids", "attention_mask", "labels"]
    forward = onnx.load(bundle.file(FORWARD_MODEL))
    inputs = [i.name for i in forward.graph.input]
    assert inputs[:3] == ["input_ids", "attention_mask", "labels"]
    # every factor is its own input: the exporter did not merge the equal (zero) lora_B tensors
    assert sorted(inputs[3:]) == [name for name, _ in bundle.factor_layout]
    assert [o.name for o in forward.graph.output] == ["logits", "loss"]
    assert not {i.name for i in forward.graph.initializer} & set(inputs)


@pytest.mark.integration
def test_optimizer_graph_is_torch_adamw_with_clipping_at_ir_10(bundle, scenario):
    optim = onnx.load(bundle.file(OPTIMIZER_MODEL))
    assert optim.ir_version == 10  # generate_artifacts wrote 14
    nodes = {node.op_type: node for node in optim.graph.node}
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes["AdamWOptimizer"].attribute}
    assert attrs["adam_mode"] == 0  # torch.optim.AdamW, not Hugging Face's
    assert attrs["epsilon"] == pytest.approx(1e-8) and attrs["weight_decay"] == 0.0
    clip = {a.name: helper.get_attribute_value(a) for a in nodes["InplaceClipGradNorm"].attribute}
    assert clip["max_norm"] == pytest.approx(scenario.train.max_grad_norm)
    for name, ir in bundle.manifest["onnx"]["ir_versions"].items():
        assert ir <= 10, name


@pytest.mark.integration
def test_bundle_tokenizer_encodes_like_the_torch_client(bundle, scenario):
    examples = list(federated_data(scenario).client_train[0][:20])
    _, torch_tokenizer = load_base(scenario.model, scenario.run.seed)
    ours = AutoTokenizer.from_pretrained(bundle.file(TOKENIZER))
    a = encode_examples(examples, torch_tokenizer, scenario.data.max_length)
    b = encode_examples(examples, ours, scenario.data.max_length)
    for name in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(getattr(a, name), getattr(b, name))


@pytest.mark.integration
def test_ensure_bundle_reuses_a_built_bundle(bundle, scenario, monkeypatch, tmp_path):
    stamp = (bundle.path / MANIFEST).stat().st_mtime_ns
    again = ensure_bundle(scenario, bundle.path)
    assert again.key == bundle.key and (bundle.path / MANIFEST).stat().st_mtime_ns == stamp
    monkeypatch.setenv("FEDFT_CACHE", str(tmp_path))
    assert default_bundle_dir(scenario) == tmp_path / "edge" / bundle.key[:20]


# ---- bundles refused -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lora.rank=4", "lora.rank"),
        ("model.tiny.hidden_size=32", "model.tiny.hidden_size"),
        ("run.seed=1", "run.seed"),  # the tiny base's weights come from the seed
        ("train.max_grad_norm=0.5", "train.max_grad_norm"),  # baked into the optimizer graph
    ],
)
def test_bundle_for_another_configuration_is_refused(bundle, override, key):
    other = load_scenario(DEFAULT, [override])
    with pytest.raises(BundleMismatchError, match=rf"`{key}`: the edge bundle at .* built for"):
        open_bundle(bundle.path, other)


@pytest.mark.integration
def test_settings_outside_the_bundle_do_not_matter(bundle):
    other = load_scenario(
        DEFAULT, ["train.lr=1e-4", "model.dtype='bfloat16'", "data.max_length=16"]
    )
    assert open_bundle(bundle.path, other).key == bundle.key


@pytest.mark.integration
def test_incomplete_bundle_is_refused(bundle, tmp_path):
    copy = shutil.copytree(bundle.path, tmp_path / "copy")
    (copy / OPTIMIZER_MODEL).unlink()
    with pytest.raises(EdgeError, match="incomplete: missing optimizer_model.onnx"):
        read_bundle(copy)
    with pytest.raises(EdgeError, match="no edge bundle at"):
        read_bundle(tmp_path / "nowhere")


@pytest.mark.integration
def test_missing_training_runtime_is_one_typed_line(bundle, monkeypatch):
    # as on Python 3.12: neither the package nor (imported by an earlier test) its api module
    monkeypatch.setitem(sys.modules, "onnxruntime.training", None)
    monkeypatch.setitem(sys.modules, "onnxruntime.training.api", None)
    with pytest.raises(TrainingRuntimeMissingError) as err:
        training_runtime()
    message = str(err.value)
    assert "\n" not in message and "install onnxruntime-training==1.19.2" in message
    assert isinstance(err.value, FedftError)
    factors = {n: np.zeros(s, np.float32) for n, s in bundle.factor_layout}
    with pytest.raises(TrainingRuntimeMissingError):
        OrtTrainer(bundle, factors, lr=1e-3)


@pytest.mark.integration
def test_model_past_the_protobuf_limit_is_refused_with_what_to_do(scenario, tmp_path):
    with pytest.raises(ModelTooLargeError, match="external data.*zo clients"):
        build_bundle(scenario, tmp_path / "b", protobuf_limit=100_000)  # the tiny base: 0.35 MB
    assert not (tmp_path / "b").exists()


# ---- the command line ------------------------------------------------------------------------


@pytest.mark.integration
def test_cli_export_then_info(tmp_path, capsys, bundle):
    out = tmp_path / "small"
    args = ["--scenario", str(DEFAULT)] + [a for o in SMALL for a in ("--set", o)]
    assert run_cli("edge", "export", *args, "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "LoRA rank 2: 4 factors" in printed and "checkpoint" in printed
    small = open_bundle(out, load_scenario(DEFAULT, SMALL))
    assert [n for n, _ in small.factor_layout][0].endswith("q_proj.lora_A.weight")
    assert run_cli("edge", "info", str(out), "--scenario", str(DEFAULT), *args[2:]) == 0
    assert "matches the scenario" in capsys.readouterr().out
    with pytest.raises(EdgeError, match="already exists"):
        run_cli("edge", "export", *args, "--out", str(out))
    with pytest.raises(BundleMismatchError, match="`lora.rank`"):  # built for rank 2, not 8
        run_cli("edge", "info", str(out), "--scenario", str(DEFAULT))
    assert json.loads((out / MANIFEST).read_text())["config"]["lora"]["rank"] == 2


# ---- graph surgery ---------------------------------------------------------------------------


def test_causal_lm_loss_is_shifted_and_ignores_minus_100():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "l", 7])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "l", 7])],
    )
    loss = add_causal_lm_loss(graph, "logits", "labels", loss="loss")
    graph.output.append(helper.make_tensor_value_info(loss, TensorProto.FLOAT, []))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString())
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=(3, 5))
    labels[:, :2] = -100
    labels[2, -1] = -100
    _, got = session.run(None, {"x": logits, "labels": labels})
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits[:, :-1]).reshape(-1, 7),
        torch.from_numpy(labels[:, 1:]).reshape(-1),
        ignore_index=-100,
    )
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    unshifted = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).reshape(-1, 7), torch.from_numpy(labels).reshape(-1)
    )
    assert float(got) != pytest.approx(float(unshifted), rel=1e-3)


def test_cap_ir_version_makes_a_graph_onnxruntime_loads(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    before = onnx.load(path).ir_version
    assert before > 10  # what onnx 1.23 stamps
    with pytest.raises(Exception, match="(?i)ir.?version|Unsupported model"):
        onnxruntime.InferenceSession(str(path))
    assert cap_ir_version(path) == (before, 10)
    assert onnx.load(path).ir_version == 10
    (y,) = onnxruntime.InferenceSession(str(path)).run(None, {"x": np.array([-1, 2], np.float32)})
    assert y.tolist() == [0.0, 2.0]
