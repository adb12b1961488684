"""What a fedft command prints: its own lines, progress where work is long, real problems.

fedft's lines go to stderr through the ``fedft`` logger. Library chatter (deprecation and future
warnings, Flower's notices, transformers' progress bars) is hidden unless ``--verbose``, in this
process and in Ray's workers, which inherit the environment set here and call
:func:`quiet_libraries` again once Flower has reset their warning filters. A progress line shows
on a terminal only, and so do colours: a redirected log holds plain text.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

VERBOSE_ENV = "FEDFT_VERBOSE"
# Known notices that say nothing to a fedft user (fedft chose these on purpose).
_FLOWER_NOTICES = (
    "The `run_simulation` function is deprecated",  # fedft simulate runs Flower's Python API
    "fraction_evaluate is set to 0.0",  # fedft evaluates on the server, not on the clients
)


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to the current ``sys.stderr`` (a progress line may replace it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # logging.StreamHandler.__init__ assigns it
        pass


def console_logging() -> None:
    """Send fedft's progress lines (logger ``fedft``) to stderr, once per process."""
    fedft_log = logging.getLogger("fedft")
    if not any(getattr(h, "_fedft", False) for h in fedft_log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._fedft = True  # type: ignore[attr-defined]
        fedft_log.addHandler(handler)
    fedft_log.setLevel(logging.INFO)
    fedft_log.propagate = False


def quiet_libraries(verbose_mode: bool) -> None:
    """Hide library chatter in this process and the processes it starts, unless verbose.

    Call it before heavy imports (the environment variables are read on import) and again after
    Flower's simulation module is imported: that module puts its own warning filter first.
    """
    if verbose_mode:
        return
    # Read on import by Ray's workers (the interpreter) and transformers / huggingface_hub.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    flwr_log = logging.getLogger("flwr")
    if not any(isinstance(f, _DropNotices) for f in flwr_log.filters):
        flwr_log.addFilter(_DropNotices())
    if "transformers" in sys.modules:  # imported before the variable was set
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def mark_simulation_workers(verbose_mode: bool) -> None:
    """Tell the Ray workers this process starts whether to keep quiet (see :func:`quiet_worker`)."""
    os.environ[VERBOSE_ENV] = "1" if verbose_mode else "0"


def quiet_worker() -> None:
    """In a ClientApp's process, as fedft's client code is imported: hide library warnings.

    ``FEDFT_VERBOSE=1`` (``fedft simulate -v``, ``fedft client -v``) keeps them. Under
    ``fedft simulate`` without ``-v`` (``FEDFT_VERBOSE=0``) Flower's log is cut to errors too,
    since Flower's import there put its warning filter first and its workers warn as they stop.
    Elsewhere (``flwr run .``, a deployed SuperNode) the run config decides the rest when the
    first message arrives (:func:`quiet_flower_app`).
    """
    mode = os.environ.get(VERBOSE_ENV)
    if mode == "1":
        return
    quiet_libraries(False)
    if mode == "0":
        logging.getLogger("flwr").setLevel(logging.ERROR)


def quiet_flower_app(run_config: Mapping[str, Any], flower_level: int = logging.WARNING) -> None:
    """In a ServerApp or ClientApp run by Flower (``flwr run .``, ``fedft server``): keep quiet.

    Unless the run config says ``verbose = true`` (``flwr run . -c verbose=true``), library
    chatter and fedft's known Flower notices are hidden as :func:`quiet_libraries` does, and
    Flower's log shows ``flower_level`` and above; with it, what :func:`quiet_worker` hid is
    shown again (warnings raised while the process started stay hidden). Each app calls it as it
    starts work: a ClientApp runs in a process (a Ray worker, a ``flwr-clientapp``) whose
    environment fedft does not set. Under ``fedft simulate`` (``FEDFT_VERBOSE`` set) it does
    nothing: the command's ``--verbose`` has decided already.
    """
    if os.environ.get(VERBOSE_ENV) is not None:
        return
    if _truthy(run_config.get("verbose", False)):
        _loud_libraries()
        return
    with contextlib.suppress(ImportError):
        # Its import puts a "once" filter for DeprecationWarning first; the simulation engine
        # imports it beside a running ServerApp: imported now, fedft's filters go above it.
        import flwr.simulation.ray_transport.utils  # noqa: F401
    quiet_libraries(False)
    logging.getLogger("flwr").setLevel(flower_level)


def _loud_libraries() -> None:
    """Show library deprecation and future warnings, and fedft's known Flower notices."""
    ours = {("ignore", None, category, None, 0) for category in (DeprecationWarning, FutureWarning)}
    # typeshed declares warnings.filters a Sequence; it is the module's list, edited in place
    warnings.filters[:] = [f for f in warnings.filters if f not in ours]  # type: ignore[index]
    flwr_log = logging.getLogger("flwr")
    for log_filter in [f for f in flwr_log.filters if isinstance(f, _DropNotices)]:
        flwr_log.removeFilter(log_filter)


def _truthy(value: object) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


class _DropNotices(logging.Filter):
    """Drop Flower's notices that fedft's own choices cause (see ``_FLOWER_NOTICES``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in _FLOWER_NOTICES)


def plain_flower_logs(verbose_mode: bool) -> None:
    """Flower's console handler: colours on a terminal only, WARNING and above unless verbose."""
    from flwr.supercore.logger import update_console_handler

    if verbose_mode:
        update_console_handler(colored=sys.stderr.isatty())
    else:
        logging.getLogger("flwr").setLevel(logging.WARNING)
        update_console_handler(level=logging.WARNING, colored=sys.stderr.isatty())


class Status:
    """A one-line, self-erasing progress display on a terminal; nothing when redirected."""

    def __init__(self) -> None:
        self._live: Any = None
        self._on_tty = sys.stderr.isatty()

    def show(self, text: str) -> None:
        """Show (or replace) the progress line."""
        if not self._on_tty:
            return
        if self._live is None:
            from rich.console import Console

            self._live = Console(stderr=True).status(text)
            self._live.start()
        else:
            self._live.update(text)

    def clear(self) -> None:
        """Erase the progress line (before a log line is printed, or at the end)."""
        if self._live is not None:
            self._live.stop()
            self._live = None


@contextlib.contextmanager
def long_step(text: str) -> Iterator[None]:
    """A progress line with the elapsed time while a long step runs (on a terminal)."""
    status = Status()
    status.show(text)
    started = time.monotonic()
    try:
        yield
    finally:
        status.clear()
        elapsed = time.monotonic() - started
        if elapsed > 5:
            logging.getLogger("fedft").info("%s: %.0f s", text, elapsed)
