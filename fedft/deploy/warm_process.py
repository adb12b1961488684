"""``fedft client``'s long-lived ClientApp process: started beside the SuperNode, kept alive.

The SuperNode runs in Flower's ``--isolation process`` mode and the process of
:mod:`fedft.deploy.warm_clientapp` serves its messages (see there why). :class:`WarmClientApp`
starts that process and, polled by ``fedft client``'s wait loop, starts it again when it exits:
a process that died (killed, out of memory) is replaced with one line on the terminal, and its
round's message, if it held one, ends as Flower ends a lost task (an error reply once its token
expires); the next message finds the new process. What the ClientApp keeps between rounds in
Flower's per-node state lives in the SuperNode and survives; what it caches in the process is
rebuilt on the next message.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO

from fedft.deploy.processes import start, stop

NEW_APP_EXIT = 3  # the process served a task of another FAB: start a fresh one
RESTART_DELAY_S = (0.5, 2.0, 10.0)  # after 1, 2, 3+ deaths in a row within QUICK_DEATH_S
QUICK_DEATH_S = 30.0


def warm_command(runtime_port: int, backend: str | None) -> list[str]:
    """The long-lived ClientApp process for the SuperNode whose Runtime API is ``runtime_port``."""
    cmd = [sys.executable, "-m", "fedft.deploy.warm_clientapp"]
    cmd += ["--runtime-api-address", f"127.0.0.1:{runtime_port}"]
    return cmd + ["--backend", backend or "torch"]


def _copy(stream: IO[bytes], sink: IO[str]) -> threading.Thread:
    def copy() -> None:
        for raw in iter(stream.readline, b""):
            sink.write(raw.decode(errors="replace"))
            sink.flush()
        stream.close()

    thread = threading.Thread(target=copy, name="clientapp-output", daemon=True)
    thread.start()
    return thread


class WarmClientApp:
    """The ClientApp process of one SuperNode, restarted whenever it exits until :meth:`stop`.

    Parameters
    ----------
    cmd:
        Its command line (:func:`warm_command`).
    env:
        Its environment.
    sink:
        Where its output goes (as it is: the ClientApp's own lines, as Flower's processes').
    """

    def __init__(self, cmd: list[str], env: Mapping[str, str], sink: IO[str]) -> None:
        self.cmd, self.env, self.sink = cmd, dict(env), sink
        self.proc: subprocess.Popen | None = None
        self.copying: threading.Thread | None = None
        self.started_at = 0.0
        self.quick_deaths = 0
        self.restarts = 0

    def start(self) -> None:
        """Start the process (its output relayed to ``sink``)."""
        self.proc = start(self.cmd, self.env, subprocess.PIPE)
        assert self.proc.stdout is not None
        self.copying = _copy(self.proc.stdout, self.sink)
        self.started_at = time.monotonic()

    def check(self) -> None:
        """Start the process again if it exited (after a delay if it keeps dying at once)."""
        if self.proc is None or (code := self.proc.poll()) is None:
            return
        if self.copying is not None:
            self.copying.join(timeout=5)
        lived = time.monotonic() - self.started_at
        self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        if code == NEW_APP_EXIT:
            why = "served a new app version"
        else:
            signum = code - 128 if code > 128 else -code  # the watchdog exits with 128 + N
            why = f"was killed by signal {signum}" if signum > 0 else f"exited with code {code}"
        self.restarts += 1
        print(f"fedft: the ClientApp process {why}: starting it again", file=self.sink)
        if self.quick_deaths:
            time.sleep(RESTART_DELAY_S[min(self.quick_deaths, len(RESTART_DELAY_S)) - 1])
        self.start()

    def stop(self) -> None:
        """Stop the process (and anything it started); it is not started again."""
        if self.proc is not None:
            stop(self.proc)
            if self.copying is not None:
                self.copying.join(timeout=10)
        self.proc = None
