"""What a device keeps loaded between rounds, and when it lets go of it.

A ClientApp process that serves many messages (``fedft client``'s long-lived process,
:mod:`fedft.deploy.warm_clientapp`; a Flower simulation's Ray workers) keeps what these
per-process caches (:data:`CACHES`) built:

- ``fedft.models.load_peft_model``: the base (quantized or not) plus LoRA;
- ``fedft.task.federated_data``: the scenario's data splits;
- ``clients.runtimes.torch_lora.client_datasets``: the partition's tokenized train and eval sets;
- ``clients.runtimes.ort_lora.edge_bundle``, ``.forward_model``, ``.client_datasets``: the opened
  edge bundle, its ONNX Runtime forward-only session, the sets tokenized by its tokenizer;
- ``clients.privacy._sigma``: the calibrated noise multiplier;
- ``fedft.edge.ort_train.SPARES``: the next round's ONNX Runtime training sessions, built ahead
  in a warm process (see :class:`fedft.edge.ort_train.SpareTrainers` for why they are not reused).

Each is keyed by its arguments: the frozen scenario (or its model, LoRA, quantization and device
sections) and the partition, so a change of any setting builds anew. What the arguments do not
show is in the *device key* (:func:`device_key`): the digest of the server's scenario text, and the
identity (size, modification time) of the files behind it: the model folder or file, the data
file, this device's own data file (``--data``) and the edge bundle of ``FEDFT_EDGE_BUNDLE``. When
the key changes between two messages (a new run, another configuration, a replaced model file or
bundle) every cache is emptied first (:func:`enter`): the new state is built on the next use and
the old one no longer holds memory.

Nothing here carries state from round to round: every round writes its start factors into the
cached model by name (``fedft.adapters.set_factors_``) with a fresh optimizer, and the zo and
Ferret sync state is read from Flower's per-node context, which the SuperNode keeps (a restarted
process rebuilds the caches and replays as a cold one does).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Hashable, Mapping
from pathlib import Path

from fedft.config import Scenario

BUNDLE_ENV = "FEDFT_EDGE_BUNDLE"  # as clients.runtimes.ort_lora.BUNDLE_ENV
CACHES: tuple[tuple[str, str], ...] = (
    ("fedft.models", "load_peft_model"),
    ("fedft.task", "federated_data"),
    ("clients.runtimes.torch_lora", "client_datasets"),
    ("clients.runtimes.ort_lora", "edge_bundle"),
    ("clients.runtimes.ort_lora", "forward_model"),
    ("clients.runtimes.ort_lora", "client_datasets"),
    ("clients.privacy", "_sigma"),
    ("fedft.edge.ort_train", "SPARES"),
)
_current: list[Hashable] = []  # the device key the caches were filled under


def file_identity(path: str | os.PathLike[str] | None) -> tuple[object, ...] | None:
    """``(size, mtime_ns)`` of a file, of each file directly in a folder; None if there is none."""
    if not path:
        return None
    target = Path(path).expanduser()
    try:
        if target.is_dir():
            return tuple(
                (p.name, p.stat().st_size, p.stat().st_mtime_ns)
                for p in sorted(target.iterdir())
                if p.is_file()
            )
        stat = target.stat()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns)


def device_key(
    digest: str, scenario: Scenario, node_config: Mapping[str, object]
) -> tuple[Hashable, ...]:
    """Everything that determines the loaded state, beyond the caches' own arguments.

    ``digest``: the server's scenario digest (its text, as sent); ``node_config``: the node's
    (only ``data-path`` counts: the partition is an argument of every cache, and one simulation
    process serves many partitions).
    """
    return (
        digest,
        scenario.model.path,
        file_identity(scenario.model.path),
        file_identity(scenario.data.path),
        file_identity(str(node_config.get("data-path", "")) or None),
        os.environ.get(BUNDLE_ENV, ""),
        file_identity(os.environ.get(BUNDLE_ENV)),
    )


def clear() -> None:
    """Empty every cache of :data:`CACHES` whose module is imported."""
    for module_name, attribute in CACHES:
        module = sys.modules.get(module_name)
        cached = getattr(module, attribute, None) if module is not None else None
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()
    gc.collect()


def enter(key: Hashable) -> bool:
    """Serve a message under the device key ``key``; True if the caches were emptied for it.

    The first message of a process fills nothing to empty (False); a key other than the last one
    empties every cache.
    """
    if not _current:
        _current.append(key)
        return False
    if _current[0] == key:
        return False
    _current[0] = key
    clear()
    return True
