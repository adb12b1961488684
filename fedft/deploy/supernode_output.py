"""What ``fedft client`` prints of its SuperNode's output, and what it says about the server.

The SuperNode (``flower-supernode``) retries the server with exponential back-off (Flower's
``make_simple_grpc_retry_invoker``) and logs each failed attempt, a reconnection and a give-up
with fixed texts (Flower 1.39). :class:`SupernodeOutput` reads those lines and says, in fedft's
words, how long the server has been unreachable and when the client gives up (``--max-wait``,
which fedft passes to the SuperNode as ``--max-wait-time``). Without ``--verbose`` it hides the
lines it replaces, the local web server's start-up notices, and everything the SuperNode prints
after giving up (Flower's exit notice, a traceback from the call that failed): fedft's one line
is the last word.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import IO

RETRYING = "Connection attempt failed, retrying in"
RECONNECTED = "Connection successful after"
GAVE_UP = "Giving up reconnection after"
# Uvicorn / FastAPI start and stop notices of the SuperNode's local Runtime API server
_NOISE = re.compile(
    r"^INFO:\s+(Started server process|Waiting for application|Application (startup|shutdown)"
    r"|Uvicorn running|Shutting down|Finished server process)"
    r"|FastAPI lifespan:"
    r"|Starting Flower SuperExec"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
REPORT_EVERY_S = 10.0


class SupernodeOutput:
    """Turn the SuperNode's lines into what the user sees (see the module docstring).

    Parameters
    ----------
    server:
        ``HOST:PORT`` the SuperNode dials (named in fedft's lines).
    max_wait_s:
        When the SuperNode gives up on an unreachable server; ``None`` for never.
    verbose:
        Show every SuperNode line as it is, fedft's lines besides.
    clock:
        Seconds, monotonic (a parameter for tests).
    """

    def __init__(
        self,
        server: str,
        max_wait_s: float | None,
        verbose: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.max_wait_s = max_wait_s
        self.verbose = verbose
        self.clock = clock
        self.unreachable_since: float | None = None
        self.gave_up_after_s: float | None = None
        self.gave_up_at: float | None = None  # when, by ``clock``
        self._last_report = float("-inf")

    def feed(self, line: str) -> list[str]:
        """The lines to print for one line of SuperNode output (without its newline)."""
        text = _ANSI.sub("", line)
        shown = [line] if self.verbose else []
        if self.gave_up_after_s is not None:
            return shown  # what follows the give-up is its consequence
        now = self.clock()
        if RETRYING in text:
            if self.unreachable_since is None:
                self.unreachable_since = now
            if now - self._last_report >= REPORT_EVERY_S:
                self._last_report = now
                shown.append(self._retrying(now - self.unreachable_since))
            return shown
        if RECONNECTED in text and self.unreachable_since is not None:
            since, self.unreachable_since = self.unreachable_since, None
            self._last_report = float("-inf")
            return [
                *shown,
                f"fedft: server at {self.server} reachable again after {now - since:.0f} s",
            ]
        if GAVE_UP in text:
            since = self.unreachable_since if self.unreachable_since is not None else now
            self.gave_up_after_s, self.gave_up_at = now - since, now
            return shown
        if self.verbose or _NOISE.search(text):
            return shown
        return [line]

    def _retrying(self, elapsed_s: float) -> str:
        limit = (
            "never giving up"
            if self.max_wait_s is None
            else f"giving up after {self.max_wait_s:g} s"
        )
        so_far = f"{elapsed_s:.0f} s so far"
        return f"fedft: server at {self.server} unreachable, retrying ({so_far}; {limit})"

    def gave_up_message(self) -> str | None:
        """The last line (fedft's error) if the SuperNode gave up on the server, else None."""
        if self.gave_up_after_s is None:
            return None
        limit = "" if self.max_wait_s is None else f"--max-wait {self.max_wait_s:g}; "
        return (
            f"server at {self.server} unreachable for {self.gave_up_after_s:.0f} s: gave up "
            f"({limit}start the server, check --server, or raise --max-wait)"
        )


def relay(stream: IO[bytes], output: SupernodeOutput, sink: IO[str]) -> threading.Thread:
    """Copy ``stream`` (the SuperNode's stdout and stderr) to ``sink`` through ``output``.

    Returns the started daemon thread; it ends when every writer of ``stream`` has closed it.
    """

    def copy() -> None:
        for raw in iter(stream.readline, b""):
            for shown in output.feed(raw.decode(errors="replace").rstrip("\r\n")):
                sink.write(shown + "\n")
                sink.flush()
        stream.close()

    thread = threading.Thread(target=copy, name="supernode-output", daemon=True)
    thread.start()
    return thread
