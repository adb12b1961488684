"""Warm devices on loopback: one ClientApp process per `fedft client` serves every round.

Two real deployments of the same zo run (`fedft server --insecure`, two `fedft client`s: partition
0 on torch, partition 1 with `--backend ort`, 3 rounds): a cold one with Flower's default
`--isolation subprocess` (a fresh ClientApp process per message), then a warm one with `fedft
client --isolation process`. In the warm one each device's rounds are served by one process (the
same PID), except that the ort device's process is SIGKILLed after round 1, while idle: `fedft
client` starts it again, the next rounds complete with both devices (the new process takes the zo
sync state from the context the SuperNode kept), and the run ends with the same global adapter, bit
for bit, and the same per-client losses as the cold run. (A zo run, because its replies are
functions of forward passes: onnxruntime-training 1.19's first-order steps are not bit-reproducible
from one run to the next, cold or warm, so a fedit run with an ort device never repeats its adapter
bit for bit.)
"""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.integration
FEDFT = [sys.executable, "-m", "fedft.cli"]
ROUNDS = 3
SETTINGS = [
    "federation.num_clients=2",
    "federation.min_train_clients=2",
    f"federation.num_rounds={ROUNDS}",
    "federation.round_timeout_s=600",
    "federation.strategy='zo'",
    "zo.local_steps=4",
    "partition.method='iid'",
    "train.local_steps=2",
    "data.num_examples=300",
    "data.global_eval_size=32",
]
SERVED = re.compile(r"^fedft: ClientApp process (\d+) served train message")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path, lines=60):
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def served_pids(log):
    """The PID of the process that served each train message, in order."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [int(m.group(1)) for line in lines if (m := SERVED.match(line))]


def wait_for(condition, timeout_s, what, logs):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := condition()) is not None and value is not False:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}\n" + "\n".join(f"--- {p}\n{tail(p)}" for p in logs))


class Run:
    """One deployment in its own folder; :meth:`wait` returns its run folder."""

    def __init__(self, base, isolation):
        self.base, self.isolation = base, isolation
        base.mkdir()
        self.env = {
            **os.environ,
            "FLWR_HOME": str(base / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
        self.fleet, self.control = free_port(), free_port()
        self.procs = {}

    def start(self, name, args):
        log = (self.base / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [*FEDFT, *args], cwd=self.base, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def log(self, name):
        return self.base / f"{name}.log"

    def launch(self):
        server = ["server", "--insecure", "--address", "127.0.0.1", "--port", str(self.fleet)]
        server += ["--control-port", str(self.control)]
        for setting in SETTINGS:
            server += ["--set", setting]
        self.start("server", server)
        for partition, backend in ((0, "torch"), (1, "ort")):
            client = ["client", "--insecure", "--server", f"127.0.0.1:{self.fleet}"]
            client += ["--partition-id", str(partition), "--num-partitions", "2"]
            client += ["--backend", backend, "--runtime-port", str(free_port())]
            self.start(f"client-{backend}", [*client, "--isolation", self.isolation])

    @property
    def logs(self):
        return [self.log(n) for n in self.procs]

    def wait(self):
        server = self.procs["server"]
        code = wait_for(lambda: server.poll(), 1500, f"the {self.isolation} run", self.logs)
        assert code == 0, tail(self.log("server"))
        (run_dir,) = [p.parent for p in (self.base / "runs").glob("*/metrics.jsonl")]
        return run_dir

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # `fedft client` stops what it started
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def adapter_digests(run_dir):
    tensors = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    return {name: hashlib.sha256(t.tobytes()).hexdigest() for name, t in tensors.items()}


def client_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return sorted(
        (r["round"], r["partition"], r["train_loss"]) for r in rows if r["kind"] == "client"
    )


def test_warm_devices_keep_their_process_and_change_no_bit(tmp_path):
    cold = Run(tmp_path / "cold", "subprocess")
    try:
        cold.launch()
        cold_dir = cold.wait()
    finally:
        cold.stop()
    assert not served_pids(cold.log("client-torch"))  # Flower's own processes served it

    warm = Run(tmp_path / "warm", "process")
    try:
        warm.launch()
        ort_log, torch_log = warm.log("client-ort"), warm.log("client-torch")
        # Round 1 served and round 2's message not yet received by the ort SuperNode: kill the
        # process while it is idle (mid-run, between two rounds)
        wait_for(
            lambda: len(served_pids(ort_log)) == 1, 900, "round 1 at the ort device", warm.logs
        )
        received = ort_log.read_text(errors="replace").count("Receiving: train message")
        assert received == 1, tail(ort_log)
        first = served_pids(ort_log)[0]
        os.kill(first, signal.SIGKILL)
        warm_dir = warm.wait()
    finally:
        warm.stop()

    torch_pids, ort_pids = served_pids(torch_log), served_pids(ort_log)
    assert len(torch_pids) == ROUNDS and len(set(torch_pids)) == 1, torch_pids  # warm
    assert len(ort_pids) == ROUNDS and ort_pids[0] == first, ort_pids
    assert first not in ort_pids[1:] and len(set(ort_pids[1:])) == 1, ort_pids  # restarted once
    assert "the ClientApp process was killed by signal 9: starting it again" in ort_log.read_text()

    rounds = [json.loads(line) for line in (warm_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in rounds if r["kind"] == "round"] == [0] + [2] * ROUNDS
    assert client_losses(warm_dir) == client_losses(cold_dir)
    assert adapter_digests(warm_dir) == adapter_digests(cold_dir)
