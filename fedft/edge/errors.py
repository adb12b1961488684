"""Typed errors of the edge runtime, and the one place that imports ONNX Runtime's training API."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from fedft.errors import FedftError

TRAINING_PACKAGE = "onnxruntime-training==1.19.2"


class EdgeError(FedftError):
    """An edge bundle cannot be built, found or used."""


class TrainingRuntimeMissingError(EdgeError, ImportError):
    """``onnxruntime.training`` cannot be imported (not installed, or no wheel for this Python)."""


class BundleMismatchError(EdgeError, ValueError):
    """An edge bundle was built for another model, LoRA or optimizer configuration."""


class ModelTooLargeError(EdgeError, ValueError):
    """A model is past protobuf's 2 GB limit for one ONNX file."""


def training_runtime() -> ModuleType:
    """Return ``onnxruntime.training`` with its ``api``, ``artifacts`` and ``onnxblock`` loaded.

    Raise a one-line error saying what to install when it cannot be imported.

    Raises
    ------
    TrainingRuntimeMissingError
        If the import fails: onnxruntime-training ships wheels for Python 3.11 (1.19.2 is its last
        release), so on 3.12+ only the forward-only path (plain ``onnxruntime``) is available.
    """
    try:
        import onnxruntime.training
        from onnxruntime.training import api, artifacts, onnxblock  # noqa: F401
    except ImportError as err:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise TrainingRuntimeMissingError(
            f"the `ort` client backend needs ONNX Runtime's training API, which cannot be imported "
            f"here ({err}): install {TRAINING_PACKAGE} on Python 3.11 (this is Python {version}), "
            "instead of plain onnxruntime; devices without it can use the forward-only zo path"
        ) from None
    return onnxruntime.training


def training_api() -> ModuleType:
    """``onnxruntime.training.api`` (CheckpointState, Module, Optimizer): what a device trains with.

    onnxruntime-training 1.19.2's ``onnxruntime/training/__init__.py`` imports its torch helpers
    (``optim``, ``amp``), so on a device without torch the package cannot be imported, although
    ``api`` itself needs only ONNX Runtime's C++ core. Without torch, ``api`` is loaded under an
    empty ``onnxruntime.training`` package (the same files; the package's own ``__init__``, which
    serves exporting bundles and torch training, is skipped). With torch, this is the plain import.

    Raises
    ------
    TrainingRuntimeMissingError
        If neither import works (plain onnxruntime, or no wheel for this Python).
    """
    try:
        return importlib.import_module("onnxruntime.training.api")
    except ModuleNotFoundError as err:
        if err.name != "torch" or "onnxruntime.training" in sys.modules:
            training_runtime()  # the one-line error saying what to install
            raise
    spec = importlib.util.find_spec("onnxruntime.training")
    if spec is None or not spec.submodule_search_locations:
        training_runtime()
        raise TrainingRuntimeMissingError("onnxruntime.training is not installed")
    package = ModuleType("onnxruntime.training")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["onnxruntime.training"] = package  # api's own imports find it here
    try:
        return importlib.import_module("onnxruntime.training.api")
    except ImportError:
        del sys.modules["onnxruntime.training"]
        training_runtime()
        raise
