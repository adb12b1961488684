"""Build an edge bundle: ONNX export of base + LoRA, ONNX Runtime training artifacts, manifest.

The steps, each forced by onnxruntime-training 1.19.2 or the legacy exporter:

1. ``torch.onnx.export(dynamo=False)`` of ``logits = model(input_ids, attention_mask)``: the
   attention mask must be a model input (Llama's mask is built from it), and it is traced with
   padding so the general masked path is recorded. ``do_constant_folding=False`` keeps every
   weight an initializer under its parameter name (folding would turn ``Linear`` weights into
   transposed ``onnx::MatMul_*`` constants), and ``keep_initializers_as_inputs=True`` stops the
   exporter from merging initializers with equal values (all zero ``lora_B``, all-ones norms);
   the inputs are dropped again afterwards. Initializers are renamed to peft's state-dict names,
   so the checkpoint holds the factors under their wire names.
2. The causal-LM loss (:func:`fedft.edge.graph.add_causal_lm_loss`: shifted, ``ignore_index =
   -100``) is added as an onnxblock loss block, since the built-in cross-entropy has no ignore
   index and no shift.
3. ``generate_artifacts`` with the LoRA factors trainable and every base weight frozen (so the
   weights live once, in the checkpoint). It does not create its output folder. Its AdamW block
   hard-codes Hugging Face's AdamW (``adam_mode = 1``); the optimizer graph is switched to
   ``adam_mode = 0``, torch.optim.AdamW's update, which the torch client uses, and its IR version
   is lowered from 14 to 10 (:func:`fedft.edge.graph.cap_ir_version`).
4. A forward-only graph: the same export, loss added, LoRA factors turned into graph inputs.
5. ``initial_factors.npz``: round 0's factors as the server builds them (the checkpoint's are
   another draw), from which a zo device without torch starts (:meth:`EdgeBundle.initial_factors`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from peft import PeftModel

from fedft.adapters import get_factors
from fedft.config import Scenario
from fedft.edge.bundle import (
    ADAMW_BETAS,
    ADAMW_EPS,
    EVAL_MODEL,
    FORWARD_MODEL,
    INITIAL_FACTORS,
    MANIFEST,
    OPTIMIZER_MODEL,
    TOKENIZER,
    TRAINING_MODEL,
    EdgeBundle,
    bundle_config,
    bundle_key,
    read_bundle,
)
from fedft.edge.errors import EdgeError, ModelTooLargeError, training_runtime
from fedft.edge.graph import (
    add_causal_lm_loss,
    cap_ir_version,
    drop_initializer_inputs,
    factors_as_inputs,
    rename_values,
    weights_as_overridable_inputs,
)
from fedft.models import initial_factors, load_base, load_peft_model, resolve_gguf, wrap_lora

log = logging.getLogger(__name__)

OPSET = 17  # the legacy exporter's well-trodden opset; onnxruntime 1.19 runs up to 21
PROTOBUF_LIMIT = 2**31  # bytes of one serialized ModelProto
_WRAPPER = "model"


class _LogitsOnly(torch.nn.Module):
    """``logits = model(input_ids, attention_mask)``: no cache, no loss, one tensor out."""

    def __init__(self, model: PeftModel) -> None:
        super().__init__()
        self.model = model  # parameter names become "model.<peft name>"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 ids and mask -> (B, L, V) float32 logits."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits


def check_protobuf_limit(num_bytes: int, what: str, limit: int = PROTOBUF_LIMIT) -> None:
    """Refuse a model whose weights alone are past protobuf's 2 GB limit for one ONNX file.

    Raises
    ------
    ModelTooLargeError
        Saying what to do instead.
    """
    if num_bytes >= limit:
        raise ModelTooLargeError(
            f"{what} holds {num_bytes / 2**30:.2f} GiB of float32 weights; one ONNX file holds "
            f"at most {limit / 2**30:.3g} GiB (protobuf's 2 GB limit). Such a model needs its "
            "weights in ONNX external data: torch.onnx.export(..., external_data=True), "
            "generate_artifacts given the .onnx path instead of a ModelProto, and the forward-only "
            "graph saved with onnx.save(..., save_as_external_data=True) for zo devices; fedft "
            "does not build those yet, so use a smaller base, or torch or zo clients for this model"
        )


def _onnx_names(model: PeftModel, graph: onnx.GraphProto) -> dict[str, str]:
    """Exported initializer name -> peft state-dict name (wrapper prefix and adapter name off)."""
    adapter = model.active_adapter
    mapping = {}
    for init in graph.initializer:
        if init.name.startswith(f"{_WRAPPER}."):
            name = init.name.removeprefix(f"{_WRAPPER}.")
            if "lora_" in name:
                name = name.replace(f".{adapter}.", ".")
            mapping[init.name] = name
    return mapping


def export_onnx(model: PeftModel, vocab_size: int) -> onnx.ModelProto:
    """Export ``model`` (base + LoRA, float32, eval mode) to an ONNX graph named like peft.

    Returns
    -------
    onnx.ModelProto
        Inputs ``input_ids`` and ``attention_mask`` (int64, (batch, sequence)); output ``logits``
        (float32, (batch, sequence, vocab)); one initializer per parameter, under its peft name.
    """
    wrapper = _LogitsOnly(model).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (2, 8), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # right padding, as fedft encodes: trace the masked path
    dynamic = {0: "batch", 1: "sequence"}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings: the traced branches (no KV cache, a mask given, length > 1) are the
        # ones every fedft batch takes; parity tests check the graph on other shapes and masks.
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=False,
            keep_initializers_as_inputs=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "logits": dynamic},
        )
        exported = onnx.load(str(path))
    drop_initializer_inputs(exported)
    rename_values(exported.graph, _onnx_names(model, exported.graph))
    return exported


def _base_names(model: PeftModel) -> list[str]:
    return [n for n, p in model.named_parameters() if not p.requires_grad]


@contextlib.contextmanager
def _native_stderr_captured(what: str) -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while ``what`` runs.

    ONNX Runtime's gradient-graph builder logs every graph pass at info level from C++, whatever
    the Python-side logger severity; the log is kept and its tail shown only if ``what`` fails.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except Exception as err:
            os.dup2(saved, 2)
            sink.seek(0)
            tail = sink.read().decode(errors="replace").strip().splitlines()[-5:]
            raise EdgeError(f"{what} failed: {err}\n" + "\n".join(tail)) from err
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _write_artifacts(
    exported: onnx.ModelProto,
    trainable: list[str],
    frozen: list[str],
    out: Path,
    scenario: Scenario,
) -> None:
    """``generate_artifacts`` into ``out`` (created), then the optimizer-graph patches."""
    ort_training = training_runtime()
    onnxblock: Any = ort_training.onnxblock  # (untyped: onnxruntime ships no type information)
    artifacts = ort_training.artifacts

    class CausalLMLoss(onnxblock.Block):
        """The shifted causal-LM cross-entropy, ignore index -100."""

        def build(self, logits: str) -> str:
            return add_causal_lm_loss(self.base.graph, logits, "labels")

    train = scenario.train
    clip = onnxblock.optim.ClipGradNorm(train.max_grad_norm) if train.max_grad_norm > 0 else None
    optimizer = onnxblock.optim.AdamW(
        betas=ADAMW_BETAS, eps=ADAMW_EPS, weight_decay=train.weight_decay, clip_grad=clip
    )
    out.mkdir(parents=True, exist_ok=True)  # generate_artifacts does not create it
    with _native_stderr_captured("generate_artifacts"):
        artifacts.generate_artifacts(
            exported,
            requires_grad=trainable,
            frozen_params=frozen,
            loss=CausalLMLoss(),
            optimizer=optimizer,
            artifact_directory=out,
        )
    path = out / OPTIMIZER_MODEL
    optim = onnx.load(path)
    for node in optim.graph.node:
        for attr in node.attribute if node.op_type == "AdamWOptimizer" else []:
            if attr.name == "adam_mode":
                attr.i = 0  # torch.optim.AdamW: decay first, bias correction on m and v
    onnx.save(optim, path)
    cap_ir_version(path)


def _forward_model(
    exported: onnx.ModelProto, trainable: list[str], overridable: list[str]
) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(exported)
    loss = add_causal_lm_loss(model.graph, "logits", "labels", loss="loss")
    model.graph.output.append(onnx.helper.make_tensor_value_info(loss, onnx.TensorProto.FLOAT, []))
    factors_as_inputs(model, trainable)
    weights_as_overridable_inputs(model, overridable)
    onnx.checker.check_model(model)
    return model


def base_fingerprint(scenario: Scenario) -> dict[str, list[int]]:
    """Sizes and mtimes of the base's local files (empty for the tiny model): staleness check."""
    model = scenario.model
    if model.source == "gguf":
        files = [resolve_gguf(model.path)]
    elif model.source == "hf":
        folder = Path(model.path)
        files = sorted(f for f in folder.iterdir() if f.suffix in (".json", ".safetensors", ".bin"))
    else:
        return {}
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()}


def _versions() -> dict[str, str]:
    names = ("torch", "transformers", "peft", "onnx", "onnxruntime-training")
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _write_initial_factors(scenario: Scenario, path: Path) -> None:
    """Round 0's factors, as the server and torch clients build them, for torch-free zo devices."""
    # __wrapped__: the uncached builder, so the exporting process keeps no second model
    model, _ = load_peft_model.__wrapped__(scenario.model, scenario.lora, scenario.run.seed)
    factors = {name: t.numpy() for name, t in initial_factors(model).items()}
    with path.open("wb") as file:
        np.savez(file, **factors)  # type: ignore[arg-type]  # (numpy types **kwds as bool)


def _build_into(scenario: Scenario, out: Path, protobuf_limit: int) -> None:
    model_cfg = dataclasses.replace(scenario.model, dtype="float32")  # ORT CPU trains in fp32
    if scenario.lora.dropout > 0:
        log.warning(
            "lora.dropout = %s is not exported: ort clients train without LoRA dropout",
            scenario.lora.dropout,
        )
    base, tokenizer = load_base(model_cfg, scenario.run.seed)
    weight_bytes = sum(p.numel() for p in base.parameters()) * 4
    check_protobuf_limit(
        weight_bytes, f"model {scenario.model.source}:{scenario.model.path}", protobuf_limit
    )
    model = wrap_lora(base, scenario.lora)
    shapes = {name: list(t.shape) for name, t in get_factors(model).items()}
    trainable, frozen = sorted(shapes), _base_names(model)
    sparse_weights = []  # zo.sparse_fraction: the weights a sparse mask may touch, fed per step
    if scenario.zo.sparse:
        from fedft.zo.sparse import masked_modules

        modules = masked_modules(model, scenario.zo.sparse_modules)
        sparse_weights = [name + ".weight" for name in modules]
    exported = export_onnx(model, len(tokenizer))
    initializers = {init.name for init in exported.graph.initializer}
    missing = [n for n in trainable + frozen if n not in initializers]
    if missing:
        raise EdgeError(f"the ONNX export lost parameter {missing[0]!r} (renamed or folded)")
    onnx.save(_forward_model(exported, trainable, sparse_weights), out / FORWARD_MODEL)
    _write_artifacts(exported, trainable, frozen, out, scenario)
    tokenizer.save_pretrained(out / TOKENIZER)
    _write_initial_factors(scenario, out / INITIAL_FACTORS)
    config = bundle_config(scenario)
    manifest: dict[str, Any] = {
        "format": config["format"],
        "key": bundle_key(config),
        "config": config,
        "factors": [[n, shapes[n]] for n in trainable],
        "export_dtype": "float32",
        "base_bytes": weight_bytes,
        "base_fingerprint": base_fingerprint(scenario),
        "onnx": {
            "opset": OPSET,
            "ir_versions": {
                name: onnx.load(out / name, load_external_data=False).ir_version
                for name in (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, FORWARD_MODEL)
            },
        },
        "files": {
            f.relative_to(out).as_posix(): f.stat().st_size
            for f in sorted(out.rglob("*"))
            if f.is_file()
        },
        "versions": _versions(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def build_bundle(
    scenario: Scenario,
    out: str | Path,
    *,
    force: bool = False,
    protobuf_limit: int = PROTOBUF_LIMIT,
) -> EdgeBundle:
    """Build the scenario's edge bundle into the folder ``out`` (atomically) and return it.

    Parameters
    ----------
    scenario : Scenario
        Its model, LoRA and optimizer settings decide the bundle (:func:`bundle_config`).
    out : str or Path
        The bundle folder; its parent is created if needed.
    force : bool
        Replace an existing folder ``out`` (otherwise that is an error).
    protobuf_limit : int
        Largest model, in bytes of float32 weights, to export into one ONNX file.

    Raises
    ------
    EdgeError
        If ``out`` exists (and not ``force``), or the export loses a parameter.
    ModelTooLargeError
        If the base is past ``protobuf_limit``.
    TrainingRuntimeMissingError
        If ``onnxruntime.training`` cannot be imported.
    """
    target = Path(out)
    if target.exists() and not force:
        raise EdgeError(f"{target} already exists (pass --force to replace it)")
    training_runtime()  # fail before the slow export
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # the artifact builder logs every graph pass
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-staging-"))
    try:
        _build_into(scenario, staging, protobuf_limit)
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # a half-built bundle is never seen under its name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_bundle(target)
