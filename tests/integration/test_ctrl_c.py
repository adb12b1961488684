"""Ctrl-C in a terminal stops `fedft simulate` within seconds, says what is kept, leaves nothing.

The command runs on a pseudo-terminal, and Ctrl-C is the byte a terminal sends (0x03): the
terminal's line discipline turns it into SIGINT for the whole foreground process group, as when
a user presses it.
"""

import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from server.checkpoint import checkpoint_round

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def read_until(fd, pattern, timeout, seen):
    """Read the terminal into ``seen`` until ``pattern`` appears, EOF or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, seen.decode(errors="replace")):
            return True
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                return False
            if not chunk:
                return False
            seen += chunk
    return bool(re.search(pattern, seen.decode(errors="replace")))


def wait_exit(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.2)
    return None


def test_ctrl_c_stops_within_seconds_and_prints_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "fedft.cli", "simulate", "--out", str(run_dir)]
    # Long rounds, so that Ctrl-C lands while the clients train.
    overrides = ["federation.num_rounds=6", "federation.num_clients=2", "partition.method=iid"]
    for o in [*overrides, "train.local_steps=150"]:
        args += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        os.chdir(ROOT)
        os.execve(sys.executable, args, env)
    seen, code = bytearray(), None
    try:
        # round 1 kept: Ctrl-C during round 2's training (one round is all the check needs)
        assert read_until(fd, r"round 1/6 \|", 600, seen), seen.decode(errors="replace")
        time.sleep(2)  # into round 2's training
        assert "clients done" in seen.decode(errors="replace")  # the progress line on a terminal
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        assert len(family) > 2  # Ray's processes and its workers are running
        os.write(fd, b"\x03")  # Ctrl-C
        t0 = time.monotonic()
        read_until(fd, r"continue with: .*\n", 60, seen)
        code = wait_exit(pid, 60 - (time.monotonic() - t0))
        stopped_s = time.monotonic() - t0
    finally:
        if code is None:  # never leave it running, whatever failed
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    read_until(fd, r"$^", 1, seen)  # whatever is left
    os.close(fd)
    text = seen.decode(errors="replace")
    assert code == 130, text
    assert stopped_s < 60, text
    kept = checkpoint_round(run_dir)
    assert kept is not None and kept >= 1
    assert f"keeps round {kept} of 6" in text
    assert f"continue with: fedft simulate --resume {run_dir}" in text
    assert "Traceback" not in text, text
    time.sleep(3)  # Ray's processes get a moment to go
    left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]
