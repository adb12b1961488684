"""Run one command so that nothing it starts outlives the fedft process that started it (Linux).

``python watchdog.py PARENT_PID -- COMMAND...`` runs COMMAND and stays its parent. Flower's
processes start their own children in sessions of their own (SuperExec, then a ServerApp or
ClientApp per run), and those outlive a SuperLink or SuperNode that dies: they only notice it
later, if at all. Here:

- the watchdog is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), so every process below it
  whose parent dies is re-parented to it and stays findable, whatever session it is in;
- it gets SIGTERM when fedft dies, even by SIGKILL (``PR_SET_PDEATHSIG``, set by fedft before
  exec), and fedft stopping it normally sends SIGTERM too: either way it sends COMMAND SIGTERM,
  waits up to :data:`GRACE_S` seconds, then SIGKILLs everything still below it;
- when COMMAND exits by itself, whatever it left below it is SIGKILLed at once (a SuperNode's
  SuperExec, a SuperLink's ServerApp), so nothing writes to the terminal or holds a port after;
- it exits with COMMAND's exit code (128 + N for a signal N), after everything below it is gone.

Standard library only: fedft starts it as a script (``python -I``), without importing fedft.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
GRACE_S = 5.0


class _Stop(Exception):
    """A stop signal arrived (fedft stops the command, or fedft itself died)."""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _reap() -> None:
    """Collect every child of ours that has exited (orphans re-parented here included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_below(deadline: float) -> None:
    """SIGKILL every process below this one until none is left (or ``deadline`` passes)."""
    while (pids := descendants(os.getpid())) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
        _reap()
    _reap()


_armed = [True]  # the first stop signal interrupts the wait; any later one is ignored


def _on_signal(signum: int, frame: object) -> None:
    if _armed[0]:
        _armed[0] = False
        raise _Stop


def run(parent: int, cmd: list[str]) -> int:
    """Run ``cmd`` under the watchdog (see the module docstring); return its exit code."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        signal.signal(getattr(signal, name), _on_signal)
    child, code = None, -signal.SIGTERM
    try:
        if os.getppid() != parent:  # fedft died before its death signal was armed
            raise _Stop
        child = subprocess.Popen(cmd)
        code = child.wait()
        _armed[0] = False
    except OSError as err:
        print(f"fedft: error: cannot start {cmd[0]}: {err.strerror}", file=sys.stderr)
        return 127
    except _Stop:
        if child is not None:
            child.terminate()
            try:
                code = child.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                code = -signal.SIGKILL
    _armed[0] = False
    _kill_below(time.monotonic() + GRACE_S)
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    """``watchdog.py PARENT_PID -- COMMAND...``."""
    if len(argv) < 3 or argv[1] != "--":
        print("usage: watchdog.py PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    return run(int(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
