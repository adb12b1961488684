"""The SuperLink's Control API, through Flower's own ``flwr`` command line.

``flwr`` finds SuperLinks by name in ``$FLWR_HOME/config.toml`` (``~/.flwr`` by default). fedft
gives the server a private ``FLWR_HOME`` with one connection, ``fedft``, so it never reads or
rewrites the user's own Flower configuration. Every call asks for ``--format json`` and is
bounded in time.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from fedft.deploy.processes import BIN, ProcessError, start

CONNECTION = "fedft"


def write_connection(flwr_home: Path, control_port: int, ca_cert: Path | None) -> Path:
    """Write ``flwr``'s config with the ``fedft`` connection (TLS with ``ca_cert``, else not)."""
    conn: dict[str, Any] = {"address": f"127.0.0.1:{control_port}"}
    if ca_cert is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(ca_cert.resolve())
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))
    return path


def flwr_json(args: Sequence[str], env: Mapping[str, str], timeout_s: float = 120.0) -> dict:
    """Run ``flwr ARGS --format json`` and return its JSON answer (or raise, quoting Flower)."""
    cmd = [str(BIN / "flwr"), *args, "--format", "json"]
    try:
        done = subprocess.run(
            cmd, env=dict(env), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise ProcessError(f"`flwr {args[0]}` did not answer within {timeout_s:.0f} s") from None
    start = done.stdout.find("{")
    try:
        answer = json.loads(done.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        answer = {}
    if done.returncode != 0 or not answer.get("success"):
        detail = answer.get("error-message") or done.stderr or done.stdout
        lines = [line.strip() for line in str(detail).splitlines() if line.strip()]
        raise ProcessError(f"`flwr {args[0]}` failed: {lines[-1] if lines else 'no output'}")
    return answer


def register_supernodes(public_keys: Sequence[str], env: Mapping[str, str]) -> list[int]:
    """Register each OpenSSH public key with ``flwr supernode register``; return the node IDs.

    A key that is already registered (the SuperLink's database outlives restarts) is skipped.
    """
    ids = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, key in enumerate(public_keys):
            path = Path(tmp) / f"key{i}.pub"
            path.write_text(key + "\n")
            try:
                answer = flwr_json(["supernode", "register", str(path), CONNECTION], env)
            except ProcessError as err:
                if "already" in str(err).lower():
                    continue
                raise
            ids.append(int(answer["node-id"]))
    return ids


def submit_run(app_dir: Path, run_config: Path, env: Mapping[str, str]) -> int:
    """``flwr run APP fedft -c RUN_CONFIG.toml``: build the app, submit it; return the run ID."""
    answer = flwr_json(["run", str(app_dir), CONNECTION, "--run-config", str(run_config)], env)
    return int(answer["run-id"])


def run_status(run_id: int, env: Mapping[str, str]) -> str:
    """The run's status as ``flwr ls`` reports it, e.g. ``running`` or ``finished:completed``."""
    answer = flwr_json(["ls", CONNECTION, "--run-id", str(run_id)], env, timeout_s=60.0)
    runs = answer.get("runs", [])
    return str(runs[0]["status"]) if runs else "unknown"


def stream_logs(run_id: int, env: Mapping[str, str]) -> subprocess.Popen:
    """``flwr log RUN_ID fedft --stream``: the run's logs on this output until the run ends."""
    cmd = [str(BIN / "flwr"), "log", str(run_id), CONNECTION, "--stream"]
    return start(cmd, env)
