"""A real deployment on loopback: `fedft server` (SuperLink) and `fedft client`s (SuperNodes).

One federation, TLS and SuperNode authentication on, serves every test here (starting one costs
most of a minute on 2 cores): three registered clients (partition 1 with `--backend zo`) and one
intruder whose key is not registered. Client 2 is killed in round 1, which completes with the
other two; the `fedft server` process alone is then SIGKILLed in round 2 (nothing it started may
outlive it or hold its port), started again with `--resume` and the run folder, and the run
finishes with no completed round lost. The commands are the ones docs/deploy.md gives, run from
one folder with the default (relative) `run.output_dir`.
"""

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
FEDFT = [sys.executable, "-m", "fedft.cli"]
SETTINGS = [
    "federation.num_clients=3",
    "partition.method='iid'",
    "federation.min_train_clients=2",
    "federation.num_rounds=2",
    # > a healthy round here (~45 s on 2 busy cores), so only a lost client can hit it; a killed
    # SuperNode is declared offline by Flower within 60 s (2 missed heartbeats), which ends the
    # round sooner
    "federation.round_timeout_s=240",
    "train.local_steps=2",
    "zo.local_steps=4",
    "data.num_examples=300",
    "data.global_eval_size=32",
]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path, lines=40):
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


def wait_for(condition, timeout_s, what, logs=()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := condition()) is not None and value is not False:
            return value
        time.sleep(0.5)
    details = "\n".join(f"--- {p.name}\n{tail(p)}" for p in logs)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{details}")


def round_rows(run_dir):
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    rows = [json.loads(line) for line in lines if line.endswith("}")]
    return [r for r in rows if r["kind"] == "round"], [r for r in rows if r["kind"] == "client"]


def process_tree(pid):
    """pid and every process below it (Flower starts SuperExec and apps in their own sessions)."""
    children = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            tree.append(child)
            todo.append(child)
    return tree


def kill_tree(pid):
    for p in process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def processes_with(marker):
    """The processes that inherited an environment marker (orphans too), with their commands."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] != "Z":  # a zombie holds nothing
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError):
            pass
    return found


def port_free(port):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the SuperLink binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def sweep(marker):
    """SIGKILL every process that inherited this test's environment marker (orphans too)."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


class Deployment:
    def __init__(self, base):
        self.base = base
        self.certs = base / "certs"
        self.runs = base / "runs"
        self.fleet, self.control = free_port(), free_port()
        tag = uuid.uuid4().hex
        self.marker = f"FEDFT_TEST_DEPLOY={tag}".encode()
        self.env = {
            **os.environ,
            "FEDFT_TEST_DEPLOY": tag,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(base / "flwr-home"),  # never the user's ~/.flwr
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }
        self.procs = {}

    def marker_of(self, name):
        return f"FEDFT_TEST_PROCESS={name}".encode()

    def start(self, name, args):
        log = (self.base / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [*FEDFT, *args],
            cwd=self.base,
            env={**self.env, "FEDFT_TEST_PROCESS": name},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def log(self, name):
        return self.base / f"{name}.log"

    def server_args(self, *extra):
        args = ["server", "--certs", str(self.certs), "--address", "127.0.0.1"]
        args += ["--port", str(self.fleet), "--control-port", str(self.control)]
        args += ["--auth-keys", str(self.base / "registered.pub")]
        for setting in SETTINGS:  # run.output_dir: the default, runs/ in the working folder
            args += ["--set", setting]
        return args + list(extra)

    def client_args(self, partition, key, *extra):
        args = ["client", "--server", f"127.0.0.1:{self.fleet}"]
        args += ["--certs", str(self.certs / "ca.pem"), "--auth-key", str(key)]
        args += ["--partition-id", str(partition), "--num-partitions", "3"]
        args += ["--runtime-port", str(free_port())]
        return args + list(extra)

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                kill_tree(proc.pid)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        sweep(self.marker)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("deploy"))
    made = subprocess.run(
        [*FEDFT, "certs", "--out", str(dep.certs), "--host", "localhost", "--ip", "127.0.0.1"]
        + ["--supernodes", "4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    # supernode-3 is the intruder: its key exists but is not registered
    registered = [(dep.certs / f"supernode-{i}.pub").read_text() for i in range(3)]
    (dep.base / "registered.pub").write_text("".join(registered))
    try:
        dep.start("server-1", dep.server_args())
        # Keys are registered once the SuperLink is up; a SuperNode that asks before is refused
        registered = "key(s) registered"
        wait_for(
            lambda: registered in tail(dep.log("server-1")), 180, registered, [dep.log("server-1")]
        )
        for i in range(3):
            extra = ["--backend", "zo"] if i == 1 else []
            dep.start(f"client-{i}", dep.client_args(i, dep.certs / f"supernode-{i}.key", *extra))
        dep.start("intruder", dep.client_args(0, dep.certs / "supernode-3.key", "--max-wait", "60"))
        yield dep
    finally:
        dep.stop()


def test_fleet_api_speaks_tls_with_the_fedft_ca(deployment):
    dep = deployment
    wait_for(lambda: "SuperLink up" in tail(dep.log("server-1")), 120, "the SuperLink")

    def handshake(context):
        with (
            socket.create_connection(("127.0.0.1", dep.fleet), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.version()

    trusting = ssl.create_default_context(cafile=str(dep.certs / "ca.pem"))
    trusting.set_alpn_protocols(["h2"])
    assert handshake(trusting).startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ssl.create_default_context())  # not a publicly trusted certificate


def test_a_supernode_whose_key_is_not_registered_is_refused(deployment):
    dep = deployment
    intruder = dep.procs["intruder"]
    wait_for(lambda: intruder.poll() is not None, 120, "the intruder to be refused")
    output = tail(dep.log("intruder"), 200)
    assert intruder.returncode == 2, output
    assert "Failed to activate SuperNode" in output, output
    assert "fedft: error: the SuperNode exited" in output, output
    # fedft's line is the last word: nothing the refused SuperNode started outlives it or prints
    assert not processes_with(dep.marker_of("intruder"))
    time.sleep(2)
    output = tail(dep.log("intruder"), 200)
    assert output.splitlines()[-1].startswith("fedft: error: the SuperNode exited"), output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    link_log = (dep.runs / "superlink" / "superlink.log").read_text(errors="replace")
    assert "No SuperNode found with the given public key" in link_log
    assert all(dep.procs[f"client-{i}"].poll() is None for i in range(3))  # registered ones stay


def test_a_killed_client_and_a_killed_server_lose_no_round(deployment):
    dep = deployment
    server = dep.procs["server-1"]
    logs = [dep.log(n) for n in ("server-1", "client-0", "client-1", "client-2")]

    def run_folder():
        found = [p for p in dep.runs.glob("*/config.toml")] if dep.runs.exists() else []
        return found[0].parent if found else None

    run_dir = wait_for(run_folder, 180, "the run folder", logs)

    # 1. Client 2 dies (SIGKILL, no goodbye) holding round 1's message; the round goes on
    received = "Receiving: train message"
    wait_for(lambda: received in tail(dep.log("client-2")), 240, "round 1 at client 2", logs)
    kill_tree(dep.procs["client-2"].pid)
    assert dep.log("client-2").read_text().count(received) == 1  # it was round 1's message
    rounds = wait_for(lambda: len(round_rows(run_dir)[0]) >= 2 or None, 300, "round 1 end", logs)
    assert server.poll() is None, tail(dep.log("server-1"))
    rounds, clients = round_rows(run_dir)
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["clients"] == 2
    assert sorted(int(c["partition"]) for c in clients if c["round"] == 1) == [0, 1]

    # 2. `fedft server` alone is SIGKILLed in round 2: the SuperLink, SuperExec, ServerApp and
    # `flwr log` it started must not outlive it, and the ports must be free again soon
    assert any(
        b"flwr-serverapp" in cmd for cmd in processes_with(dep.marker_of("server-1")).values()
    )
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    deadline = time.monotonic() + 30  # the watchdog gives the SuperLink 5 s, then SIGKILLs
    while (left := processes_with(dep.marker_of("server-1"))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"still running 30 s after `fedft server` was killed: {left}"
    assert port_free(dep.fleet) and port_free(dep.control)
    rounds, _ = round_rows(run_dir)
    assert [r["round"] for r in rounds] == [0, 1], "round 2 finished before the server died"
    assert (run_dir / "checkpoint.safetensors").is_file()

    # 3. The same command plus --resume and the run folder, from the same working folder: the
    # SuperLink still knows the SuperNodes (its state is runs/superlink)
    printed = run_dir.relative_to(dep.base)
    resumed = dep.start("server-2", dep.server_args("--resume", str(printed)))
    code = wait_for(lambda: resumed.poll(), 360, "the resumed run", [dep.log("server-2"), *logs])
    assert code == 0, tail(dep.log("server-2"), 80)
    output = dep.log("server-2").read_text(errors="replace")
    assert "resuming" in output and "after round 1" in output
    rounds, clients = round_rows(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]  # none lost, none repeated
    assert rounds[2]["clients"] == 2 and rounds[2]["eval_loss"] < rounds[0]["eval_loss"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()

    # `--backend zo` reached partition 1's ClientApp through the node config: bytes, not factors
    for server_round in (1, 2):
        up = {int(c["partition"]): c["bytes_up"] for c in clients if c["round"] == server_round}
        assert sorted(up) == [0, 1]
        assert up[1] * 20 < up[0], up
