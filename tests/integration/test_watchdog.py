"""Nothing a Flower process starts outlives fedft: real processes, a grandchild in its own session.

Flower's SuperLink and SuperNode start SuperExec (and it the ServerApp or ClientApp) in sessions
of their own; these stand-ins do the same with a grandchild that holds a port on loopback.
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

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="the watchdog is Linux only"),
]
ROOT = Path(__file__).resolve().parents[2]

# A "Flower process": starts a grandchild in a session of its own that listens on PORT, then
# waits (or, with "exit", exits once it listens and leaves the grandchild behind).
FLOWER_STANDIN = """
import subprocess, sys, time
grandchild = '''
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
time.sleep(300)
'''
args = [sys.executable, "-c", grandchild, sys.argv[1]]
proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE, text=True)
assert proc.stdout.readline().strip() == "listening"
time.sleep(0 if sys.argv[2] == "exit" else 300)
"""

# fedft's side: start the stand-in as fedft starts Flower's processes, then wait.
STARTER = """
import os, sys, time
from fedft.deploy.processes import start
proc = start([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]], dict(os.environ))
print(proc.pid, flush=True)
print("exit code", proc.wait(), flush=True)
time.sleep(300)
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port):
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def processes_with(marker):
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            pass
    return found


def wait_until(condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture
def starter():
    tag = uuid.uuid4().hex
    marker = f"FEDFT_TEST_WATCHDOG={tag}".encode()
    env = {**os.environ, "FEDFT_TEST_WATCHDOG": tag, "PYTHONPATH": str(ROOT)}
    procs = []

    def run(mode):
        port = free_port()
        args = [sys.executable, "-c", STARTER, FLOWER_STANDIN, str(port), mode]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        if mode == "wait":
            assert wait_until(lambda: listening(port), 30), "the grandchild never listened"
        return proc, port, marker

    yield run
    for pid in processes_with(marker):
        os.kill(pid, signal.SIGKILL)
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def test_sigkilling_fedft_leaves_no_process_and_frees_the_port(starter):
    proc, port, marker = starter("wait")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert wait_until(lambda: not processes_with(marker), 15), processes_with(marker)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free again


def test_a_process_that_exits_takes_what_it_started_along(starter):
    proc, port, marker = starter("exit")
    assert proc.stdout.readline().strip().isdigit()
    assert proc.stdout.readline().strip() == "exit code 0"
    assert processes_with(marker) == [proc.pid]  # fedft's side only, at once
    assert not listening(port)
