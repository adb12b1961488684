"""A device with only the `device` extra (no torch) trains deployed rounds beside a torch device.

A fresh virtual environment gets fedft (`pip install --no-deps`) and
`clients/device-requirements.txt` from the package index, as docs/deploy.md says: no torch,
transformers or peft. On loopback, a `fedft server` (SuperLink) runs a fedit round and then a zo
round with two `fedft client`s (SuperNodes): partition 0 from the test's own environment (torch),
partition 1 from the new one with `--backend ort` and an edge bundle exported here
(`FEDFT_EDGE_BUNDLE`). Both rounds need
both replies (`federation.min_train_clients = 2`).

The environment is made once per test session under the basetemp (about 4 minutes of
`pip install` on this machine with an empty pip cache); `FEDFT_TEST_DEVICE_VENV=DIR` reuses one.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.test_deploy import free_port, kill_tree, round_rows, sweep, tail, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
HEAVY = ("torch", "transformers", "peft", "bitsandbytes")
SETTINGS = [
    "federation.num_clients=2",
    "partition.method='iid'",
    "federation.min_train_clients=2",
    "federation.num_rounds=1",
    "federation.round_timeout_s=400",
    "train.local_steps=2",
    "zo.local_steps=4",
    "data.num_examples=300",
    "data.global_eval_size=32",
]


def base_python():
    return getattr(sys, "_base_executable", sys.executable)


def make_venv(folder):
    """python -m venv, fedft without dependencies, then the device extra's list; seconds taken."""
    started = time.monotonic()
    if not (folder / "bin" / "python").exists():
        subprocess.run([base_python(), "-m", "venv", str(folder)], check=True, timeout=300)
    source = folder.parent / f"fedft-source-{uuid.uuid4().hex[:8]}"  # no build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("fedft", "clients", "server"):
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([*pip, "--no-deps", str(source)], check=True, timeout=900, env=env)
    subprocess.run(
        [*pip, "-r", str(ROOT / "clients" / "device-requirements.txt")],
        check=True,
        timeout=1800,
        env=env,
    )
    shutil.rmtree(source)
    return time.monotonic() - started


@pytest.fixture(scope="session")
def device_venv(tmp_path_factory):
    given = os.environ.get("FEDFT_TEST_DEVICE_VENV")
    folder = Path(given) if given else tmp_path_factory.getbasetemp() / "device-venv"
    seconds = make_venv(folder)
    print(f"device venv {folder}: made in {seconds:.0f} s")
    return folder


def device_env(venv, base, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {
        **env,
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "FLWR_HOME": str(base / "flwr-home-device"),
        **extra,
    }


def test_the_device_environment_has_no_torch(device_venv):
    found = subprocess.run(
        [str(device_venv / "bin" / "python"), "-c",
         "import importlib.util as u, json; "
         f"print(json.dumps([m for m in {HEAVY!r} if u.find_spec(m)]))"],
        capture_output=True, text=True, timeout=120,
        env=device_env(device_venv, Path("/tmp")),
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == []


class Federation:
    """`fedft server` runs and two SuperNodes: a torch one, and a torch-free ort one."""

    def __init__(self, base, venv):
        self.base, self.venv = base, venv
        self.fleet, self.control = free_port(), free_port()
        tag = uuid.uuid4().hex
        self.marker = f"FEDFT_TEST_DEPLOY={tag}".encode()
        self.env = {
            **os.environ,
            "FEDFT_TEST_DEPLOY": tag,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(base / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }
        self.procs = {}

    def start(self, name, python, args, env):
        log = (self.base / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [python, "-m", "fedft.cli", *args],
            cwd=self.base,
            env={**env, "FEDFT_TEST_PROCESS": name},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def log(self, name):
        return self.base / f"{name}.log"

    def server(self, name, *settings):
        args = ["server", "--insecure", "--address", "127.0.0.1", "--port", str(self.fleet)]
        args += ["--control-port", str(self.control)]
        for setting in [*SETTINGS, *settings]:
            args += ["--set", setting]
        return self.start(name, sys.executable, args, self.env)

    def client(self, partition, python, env, *extra):
        args = ["client", "--server", f"127.0.0.1:{self.fleet}", "--insecure"]
        args += ["--partition-id", str(partition), "--num-partitions", "2"]
        args += ["--runtime-port", str(free_port()), *extra]
        return self.start(f"client-{partition}", python, args, env)

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                kill_tree(proc.pid)
        sweep(self.marker)


@pytest.fixture(scope="module")
def federation(tmp_path_factory, device_venv):
    base = tmp_path_factory.mktemp("torch-free-deploy")
    bundle = base / "bundle"
    made = subprocess.run(
        [sys.executable, "-m", "fedft.cli", "edge", "export", "--out", str(bundle)]
        + [arg for s in SETTINGS for arg in ("--set", s)],
        capture_output=True, text=True, timeout=900, cwd=base,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    fed = Federation(base, device_venv)
    device = device_env(device_venv, base, FEDFT_EDGE_BUNDLE=str(bundle))
    device = {**device, "FEDFT_TEST_DEPLOY": fed.env["FEDFT_TEST_DEPLOY"]}
    try:
        fed.client(0, sys.executable, fed.env)
        fed.client(1, str(device_venv / "bin" / "python"), device, "--backend", "ort")
        yield fed
    finally:
        fed.stop()


def finished_run(fed, name, *settings):
    server = fed.server(name, *settings)
    logs = [fed.log(n) for n in (name, "client-0", "client-1")]
    code = wait_for(lambda: server.poll(), 900, f"the {name} run", logs)
    assert code == 0, "\n".join(tail(p, 60) for p in logs)
    found = [p.parent for p in (fed.base / "runs").glob("*/config.toml")]
    run_dir = max(found, key=lambda p: p.stat().st_mtime)
    rounds, clients = round_rows(run_dir)
    return run_dir, rounds, [c for c in clients if c["round"] == 1]


def test_a_torch_free_ort_device_trains_a_fedit_round_and_a_zo_round(federation):
    fed = federation
    _, rounds, clients = finished_run(fed, "server-fedit")
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["clients"] == 2
    by_partition = {int(c["partition"]): c for c in clients}
    assert sorted(by_partition) == [0, 1]
    assert "base_bytes" in by_partition[1]  # ort_lora's metric: the ONNX Runtime path ran
    assert by_partition[1]["train_loss"] > 0

    _, rounds, clients = finished_run(fed, "server-zo", "federation.strategy='zo'")
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["clients"] == 2
    up = {int(c["partition"]): c["bytes_up"] for c in clients}
    assert sorted(up) == [0, 1] and up[1] < 1000  # seeds and one-byte scalars, not factors
    device_log = fed.log("client-1").read_text(errors="replace")
    assert "Traceback" not in device_log, tail(fed.log("client-1"), 80)
