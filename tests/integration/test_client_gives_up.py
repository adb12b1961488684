"""A real `fedft client` on loopback gives up on a server it cannot reach, and says so.

No server at all, then a bare SuperLink (no run: joining costs seconds) that is killed after the
client joined. Either way: fedft's retry lines while it waits, one error line at the end naming
the server and `--max-wait`, exit code 2, and nothing the client started left running.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fedft.deploy.processes import flower_env, start, stop, superlink_command, wait_for_port

pytestmark = pytest.mark.integration
FEDFT = [sys.executable, "-m", "fedft.cli"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_with(marker):
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def start_client(tmp_path, port, max_wait):
    tag = f"FEDFT_TEST_CLIENT={uuid.uuid4().hex}"
    env = {**os.environ, tag.split("=")[0]: tag.split("=")[1], "FLWR_HOME": str(tmp_path)}
    args = ["client", "--server", f"127.0.0.1:{port}", "--insecure", "--partition-id", "0"]
    args += ["--num-partitions", "2", "--runtime-port", str(free_port()), "--max-wait", max_wait]
    proc = subprocess.Popen(
        [*FEDFT, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, tag.encode()


def finish(proc, marker, timeout_s):
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
    return output


def assert_gave_up(proc, output, marker, port, max_wait):
    lines = output.strip().splitlines()
    assert proc.returncode == 2, output
    assert lines[-1].startswith(f"fedft: error: server at 127.0.0.1:{port} unreachable for "), (
        output
    )
    assert f"gave up (--max-wait {max_wait};" in lines[-1], output
    assert sum("error" in line.lower() for line in lines) == 1, (
        output
    )  # Flower's exit notice hidden
    assert f"unreachable, retrying (0 s so far; giving up after {max_wait} s)" in output, output
    assert "Traceback" not in output and "Connection attempt failed" not in output, output
    assert not processes_with(marker), "a process the client started is still running"


def test_a_client_without_a_server_gives_up_with_one_line(tmp_path):
    port = free_port()  # nothing listens there
    proc, marker = start_client(tmp_path, port, "6")
    output = finish(proc, marker, 120)
    assert_gave_up(proc, output, marker, port, 6)


def test_a_client_whose_server_disappears_gives_up_with_one_line(tmp_path):
    fleet, control = free_port(), free_port()
    cmd = superlink_command(f"127.0.0.1:{fleet}", control, tmp_path / "link.db", None)
    with (tmp_path / "superlink.log").open("wb") as log:
        superlink = start(cmd, flower_env(tmp_path / "link-home"), log)
    try:
        wait_for_port(fleet, superlink, 120, "the SuperLink")
        proc, marker = start_client(tmp_path, fleet, "8")
        deadline = time.monotonic() + 120  # the client registers: the SuperLink logs its node
        while b"ActivateNode" not in (tmp_path / "superlink.log").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "superlink.log").read_text()
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    finally:
        stop(superlink)
    output = finish(proc, marker, 120)
    assert_gave_up(proc, output, marker, fleet, 8)
