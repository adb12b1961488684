"""`flwr run .` as a newcomer types it, then the README's command: neither installs anything.

Flower's local SuperLink, started by the first `flwr run` and left running, `uv sync`s the app's
dependencies into a new environment for every run unless it was started with
FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1. fedft's pyproject.toml makes that sync a no-op.
Each run here is one short round; the whole Flower home is a temporary folder, uv may not
download, the SuperLink listens on free ports, and it is stopped (by its process id) at the end.
"""

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = "federation.num_rounds=1 train.local_steps=2 data.num_examples=300 data.global_eval_size=16"
MAX_RUNTIME_ENV_BYTES = 50 * 2**20  # an install of torch alone is ~100 times this
pytestmark = pytest.mark.integration


def readme_flwr_run_line():
    """The README's `flwr run` command, backslash continuations joined."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    lines = [b.replace("\\\n", " ") for b in blocks]
    commands = [c for b in lines for c in b.splitlines() if " flwr run ." in f" {c}"]
    assert len(commands) == 1, commands
    return commands[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def folder_bytes(folder):
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def test_plain_flwr_run_then_the_readme_command_install_nothing(tmp_path):
    home, runs = tmp_path / "flwr", tmp_path / "runs"
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k != "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"
        },
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        # uv may not download: an install would fail at once instead of fetching gigabytes.
        "UV_OFFLINE": "1",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
    }

    # Two names: the runs start within a second, and a run folder is <name>-<time in seconds>.
    def set_arg(name):
        return shlex.quote(f'set="{TINY} run.output_dir={runs} run.name={name}"')

    readme = re.sub(
        r"""-c 'set="[^"]*"'""", lambda _: f"-c {set_arg('readme')}", readme_flwr_run_line()
    )
    plain = f"flwr run . --federation-config num-supernodes=5 -c {set_arg('plain')}"
    biggest, readme_run = 0, None
    try:
        # As typed plainly: returns at once, leaves a SuperLink (started without the variable).
        first = subprocess.run(
            ["bash", "-c", plain], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert first.returncode == 0, first.stdout + first.stderr
        readme_run = subprocess.Popen(
            ["bash", "-c", readme],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 900
        while readme_run.poll() is None and time.monotonic() < deadline:
            if (home / "runtime-envs").is_dir():
                biggest = max(biggest, folder_bytes(home / "runtime-envs"))
            assert biggest < MAX_RUNTIME_ENV_BYTES, f"Flower is installing: {biggest} bytes"
            time.sleep(1)
        if readme_run.poll() is None:
            readme_run.kill()
        output = readme_run.communicate(timeout=30)[0]
        assert readme_run.returncode == 0, output
        assert "No additional application dependencies needed installation" in output, output
        assert "Installed:" not in output
        # As quiet as `fedft simulate`: fedft's lines, no library warnings from the ServerApp or
        # the ClientApps' workers, no Flower notice that fedft's own choices cause
        assert "run folder:" in output, output
        for noise in ("FutureWarning", "DeprecationWarning", "fraction_evaluate is set to 0.0"):
            assert noise not in output, output
        # Both runs finished: two run folders, each with its adapter. A run that ended without
        # one (its ServerApp task finished, says the SuperLink) fails now, not at the deadline.
        link_log = home / "local-superlink" / "superlink.log"
        grace = None
        while time.monotonic() < deadline and len(list(runs.glob("*/adapter"))) < 2:
            log = link_log.read_text(errors="replace") if link_log.is_file() else ""
            if grace is None and log.count("Finished task") >= 2:
                grace = time.monotonic() + 10
            if grace is not None and time.monotonic() > grace:
                break
            time.sleep(2)
        assert len(list(runs.glob("*/adapter"))) == 2, output + "".join(
            f"\n{m}:\n{m.read_text()}" for m in runs.glob("*/metrics.jsonl")
        )
    finally:
        if readme_run is not None and readme_run.poll() is None:
            readme_run.kill()
        superlinks = [
            p
            for p in psutil.process_iter(["cmdline"])
            if "flower-superlink" in " ".join(p.info["cmdline"] or [])
            and str(home) in " ".join(p.info["cmdline"] or [])
        ]
        family = [q for p in superlinks for q in [p, *p.children(recursive=True)]]
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(family, timeout=30)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _, alive = psutil.wait_procs(alive, timeout=30)
    assert superlinks, "flwr run started no local SuperLink"
    assert not alive, [p.pid for p in alive]
