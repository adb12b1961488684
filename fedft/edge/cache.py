"""Where edge bundles live on a machine: one cache folder per configuration, built on first use.

``cache_dir()/edge/<key>`` (``$FEDFT_CACHE`` or ``~/.cache/fedft``), keyed by the configuration
hash (:func:`fedft.edge.bundle.bundle_key`). Simulated clients that need a missing bundle at the
same time build it once: the others wait on a lock file beside it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from fedft.config import Scenario
from fedft.edge.bundle import (
    MANIFEST,
    EdgeBundle,
    bundle_config,
    bundle_key,
    check_bundle,
    read_bundle,
)
from fedft.edge.export import base_fingerprint, build_bundle
from fedft.models import cache_dir

log = logging.getLogger(__name__)


def default_bundle_dir(scenario: Scenario) -> Path:
    """``cache_dir()/edge/<key>``: where simulations keep the bundle of a configuration."""
    return cache_dir() / "edge" / bundle_key(bundle_config(scenario))[:20]


def ensure_bundle(scenario: Scenario, folder: str | Path | None = None) -> EdgeBundle:
    """Return the scenario's bundle from ``folder`` (default: the cache), building it if missing.

    Processes that need the same missing bundle (simulated clients) build it once: the others wait
    on a lock file beside it. A cached bundle whose base files changed since it was built (sizes,
    mtimes) is rebuilt.

    Raises
    ------
    BundleMismatchError
        If ``folder`` holds a bundle built for another configuration.
    """
    target = Path(folder) if folder is not None else default_bundle_dir(scenario)
    bundle = _current_bundle(target, scenario)
    if bundle is not None:
        return bundle
    with _exclusive(target.parent / f".{target.name}.lock"):
        bundle = _current_bundle(target, scenario)  # built while this process waited?
        if bundle is not None:
            return bundle
        log.info("building the edge bundle (once): %s", target)
        return build_bundle(scenario, target, force=True)


def _current_bundle(target: Path, scenario: Scenario) -> EdgeBundle | None:
    if not (target / MANIFEST).is_file():
        return None
    bundle = read_bundle(target)
    check_bundle(bundle, scenario)
    if bundle.manifest.get("base_fingerprint", {}) != base_fingerprint(scenario):
        log.info("the base model files changed since %s was built: rebuilding", target)
        return None
    return bundle


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (no lock where fcntl is missing: Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
