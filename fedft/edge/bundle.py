"""The edge bundle on disk: its files, its manifest, and the configuration hash that guards it.

A bundle is only valid for the configuration it was built from: the base model, the LoRA shape and
the optimizer constants baked into its optimizer graph. That configuration is a small JSON-ready
dict (:func:`bundle_config`) whose dotted keys are the scenario's own keys; its SHA-256
(:func:`bundle_key`) names the cache folder and is recorded in ``manifest.json``. A client opens a
bundle with :func:`open_bundle`, which refuses one built for another configuration and names the
first key that differs.

No torch here: a device that only has the bundle can open and check it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedft.config import Scenario
from fedft.edge.errors import BundleMismatchError, EdgeError
from fedft.schema import to_dict

BUNDLE_FORMAT = "fedft-edge-bundle/1"
MANIFEST = "manifest.json"
TRAINING_MODEL = "training_model.onnx"
EVAL_MODEL = "eval_model.onnx"
OPTIMIZER_MODEL = "optimizer_model.onnx"
CHECKPOINT = "checkpoint"
FORWARD_MODEL = "forward_model.onnx"
TOKENIZER = "tokenizer"
# round 0's LoRA factors (fedft.models.initial_factors) as numpy arrays: what a zo node without
# torch replays from (bundles built before it was added lack it; torch nodes never read it)
INITIAL_FACTORS = "initial_factors.npz"
# torch.optim.AdamW's defaults, which fedft.train.train_local uses; baked into the optimizer graph.
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8


def bundle_config(scenario: Scenario) -> dict[str, Any]:
    """The part of a scenario an edge bundle depends on, keyed like the scenario itself.

    The exported graphs are float32 whatever ``model.dtype`` is, and LoRA dropout is not exported
    (the graphs are traced in eval mode), so neither is part of it; the learning rate is set at
    run time. The tiny model's weights are drawn from ``run.seed``, so the seed is part of it then.
    """
    model = scenario.model
    config: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "model": {"source": model.source, "path": model.path},
        "lora": {
            "rank": scenario.lora.rank,
            "alpha": float(scenario.lora.alpha),
            "target_modules": list(scenario.lora.target_modules),
        },
        "train": {
            "weight_decay": float(scenario.train.weight_decay),
            "max_grad_norm": float(scenario.train.max_grad_norm),
        },
        "adamw": {"betas": list(ADAMW_BETAS), "eps": ADAMW_EPS},
    }
    if scenario.zo.sparse:  # the forward graph takes these modules' weights as inputs
        config["zo_sparse_modules"] = sorted(scenario.zo.sparse_modules)
    if model.source == "tiny":
        config["model"]["tiny"] = to_dict(model.tiny)
        config["run"] = {"seed": scenario.run.seed}
    return config


def bundle_key(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a :func:`bundle_config`."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def first_difference(built: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """The first dotted key whose value differs between two bundle configs, or None."""
    a, b = _flatten(built), _flatten(wanted)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return key
    return None


@dataclass(frozen=True)
class EdgeBundle:
    """An edge bundle folder and its manifest.

    Attributes
    ----------
    path : Path
        The folder.
    manifest : dict
        ``manifest.json``: ``format``, ``key``, ``config``, ``factors`` (``[[name, shape], ...]``
        in the order the perturbation layout uses: names sorted), ``files`` (bytes), ``onnx``
        (opset, IR versions), ``versions`` of the exporting packages.
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        """The configuration hash the bundle was built for."""
        return str(self.manifest["key"])

    @property
    def factor_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """``[(name, shape), ...]`` of the LoRA factors, names sorted (the zo layout)."""
        return [
            (str(name), tuple(int(d) for d in shape)) for name, shape in self.manifest["factors"]
        ]

    def file(self, name: str) -> Path:
        """Path of one of the bundle's files (``TRAINING_MODEL``, ``FORWARD_MODEL``, ...)."""
        return self.path / name

    def initial_factors(self) -> dict[str, np.ndarray]:
        """Round 0's LoRA factors (float32, by name) as every process builds them.

        Raises
        ------
        EdgeError
            If the bundle has no ``initial_factors.npz`` (built before fedft wrote it), or it
            does not hold exactly the bundle's factors.
        """
        path = self.file(INITIAL_FACTORS)
        if not path.is_file():
            raise EdgeError(
                f"edge bundle {self.path} has no {INITIAL_FACTORS} (a zo device without torch "
                "starts from it): rebuild it with `fedft edge export --scenario ...`"
            )
        with np.load(path, allow_pickle=False) as stored:
            factors = {name: np.array(stored[name], dtype=np.float32) for name in stored.files}
        layout = dict(self.factor_layout)
        shapes = {name: tuple(a.shape) for name, a in factors.items()}
        if shapes != layout:
            raise EdgeError(f"{path}: the factors are not the bundle's ({len(shapes)} tensors)")
        return factors

    def size_bytes(self) -> int:
        """Bytes on disk of every file in the bundle."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def read_bundle(path: str | Path) -> EdgeBundle:
    """Read a bundle's manifest and check that its files are there.

    Raises
    ------
    EdgeError
        If the folder, its manifest or one of its files is missing, or the format is unknown.
    """
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise EdgeError(f"no edge bundle at {folder} (missing {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EdgeError(f"{manifest_path} is not valid JSON: {err}") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise EdgeError(
            f"{manifest_path}: format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}"
        )
    for name in (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT, FORWARD_MODEL):
        if not (folder / name).exists():
            raise EdgeError(f"edge bundle {folder} is incomplete: missing {name}")
    return EdgeBundle(folder, manifest)


def check_bundle(bundle: EdgeBundle, scenario: Scenario) -> None:
    """Refuse a bundle built for another configuration than the scenario's.

    Raises
    ------
    BundleMismatchError
        Naming the first scenario key that differs, with both values.
    """
    wanted = bundle_config(scenario)
    if bundle.key == bundle_key(wanted) and bundle.manifest.get("config") == wanted:
        return
    built = bundle.manifest.get("config", {})
    key = first_difference(built, wanted) or "key"
    got, want = _flatten(built).get(key), _flatten(wanted).get(key)
    raise BundleMismatchError(
        f"`{key}`: the edge bundle at {bundle.path} was built for {got!r}, this run has {want!r}; "
        "build a matching one with `fedft edge export --scenario ...`"
    )


def open_bundle(path: str | Path, scenario: Scenario) -> EdgeBundle:
    """Read a bundle and check it matches the scenario (see :func:`check_bundle`)."""
    bundle = read_bundle(path)
    check_bundle(bundle, scenario)
    return bundle
