"""Flower's processes: their command lines, their environment, starting and stopping them.

Nothing here reimplements Flower: a SuperLink is ``flower-superlink``, a SuperNode is
``flower-supernode``, each with the flags ``flower-superlink --help`` documents (Flower 1.39):

- the SuperLink serves the Fleet API over gRPC (``--fleet-api-type grpc-rere``, the transport
  SuperNodes speak) on ``--fleet-api-address``, and the Control and Runtime APIs over HTTPS on
  ``--host``/``--port``; one certificate (``--ssl-*``) covers all three;
- ``--database`` keeps the SuperLink's state in a file, so a restarted SuperLink still knows its
  SuperNodes and they carry on (with the default in-memory state they exit on reconnection);
- ``--enable-supernode-auth`` admits only SuperNodes whose public key was registered.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fedft.deploy.watchdog import descendants
from fedft.errors import FedftError

WATCHDOG = Path(__file__).with_name("watchdog.py")
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr live beside python
DEFAULT_FLEET_PORT = 9092  # Flower's default Fleet API port
DEFAULT_CONTROL_PORT = 9093  # fedft's choice; Flower 1.39's HTTP default (8000) often clashes
SUPEREXEC_POLL_S = 0.2  # a local HTTP call: 5 a second cost nothing next to a round
DEFAULT_RUNTIME_PORT = 9094  # Flower's default SuperNode Runtime API port


class ProcessError(FedftError, RuntimeError):
    """A Flower process did not start, or stopped, in a way the user must see."""


@dataclass(frozen=True)
class ServerTls:
    """The SuperLink's certificate files (from ``fedft certs``)."""

    ca_cert: Path
    cert: Path
    key: Path


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment of a Flower process started by fedft.

    Flower's executables and the ones they start (``flower-superexec``, ``flwr-serverapp``,
    ``flwr-clientapp``) must resolve to this Python's; Flower must not ``uv sync`` the app's
    dependencies at run time (they are installed); ``FLWR_HOME`` (Flower's config and app
    folder, ``~/.flwr`` by default) is private to the server when given. A SuperExec (the
    SuperLink's, and a SuperNode's in ``--isolation subprocess``) asks for tasks every
    :data:`SUPEREXEC_POLL_S` (Flower's default: 1 s; ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, the
    one poll interval of a round that Flower 1.39 lets a user set).
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(SUPEREXEC_POLL_S))
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def superlink_command(
    fleet_address: str,
    control_port: int,
    database: Path,
    tls: ServerTls | None,
    supernode_auth: bool = False,
) -> list[str]:
    """``flower-superlink`` with the Fleet API on gRPC and the Control API on loopback."""
    cmd = [
        str(BIN / "flower-superlink"),
        "--fleet-api-type",
        "grpc-rere",
        "--fleet-api-address",
        fleet_address,
        "--host",
        "127.0.0.1",  # Control and Runtime APIs: only this host submits runs
        "--port",
        str(control_port),
        "--database",
        str(database),
        "--disable-runtime-dependency-installation",
    ]
    if tls is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(tls.ca_cert)]
        cmd += ["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
    if supernode_auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def node_config_arg(entries: Mapping[str, int | str]) -> str:
    """Flower's ``--node-config`` value: space-separated ``key=value``, strings TOML-quoted."""
    parts = []
    for key, value in entries.items():
        if isinstance(value, str):
            if '"' in value:
                raise ProcessError(f"`{key}`: a node-config value cannot contain '\"': {value}")
            value = f'"{value}"'
        parts.append(f"{key}={value}")
    return " ".join(parts)


def supernode_command(
    superlink: str,
    ca_cert: Path | None,
    node_config: Mapping[str, int | str],
    runtime_port: int = DEFAULT_RUNTIME_PORT,
    auth_key: Path | None = None,
    max_wait_s: float | None = None,
    isolation: str = "subprocess",
) -> list[str]:
    """``flower-supernode`` dialling ``superlink`` over gRPC (TLS unless ``ca_cert`` is None).

    ``isolation``: Flower's ``--isolation``; ``process``: it starts no ClientApp process itself
    (``fedft client`` starts a long-lived one, :mod:`fedft.deploy.warm_process`).
    """
    cmd = [str(BIN / "flower-supernode"), "--grpc-rere", "--superlink", superlink]
    cmd += ["--isolation", isolation]
    cmd += ["--root-certificates", str(ca_cert)] if ca_cert is not None else ["--insecure"]
    cmd += ["--node-config", node_config_arg(node_config), "--port", str(runtime_port)]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    if max_wait_s is not None:
        cmd += ["--max-wait-time", str(max_wait_s)]
    return cmd


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: SIGTERM this process when the fedft process that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def start(
    cmd: Sequence[str], env: Mapping[str, str], log: IO[bytes] | int | None = None
) -> subprocess.Popen:
    """Start ``cmd``; its output goes to ``log`` or to this process's own.

    ``log`` is a file, or ``subprocess.PIPE``: stdout and stderr both into ``proc.stdout``.

    The process gets a session of its own, so Ctrl-C reaches fedft alone, which then stops it
    and everything it started (:func:`stop`). On Linux it runs under :mod:`watchdog`, which
    gets SIGTERM if fedft dies (even by SIGKILL) and then stops everything below it, Flower's
    own children in their own sessions included: nothing outlives fedft, no port stays held.
    """
    argv = list(cmd)
    if shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
        raise ProcessError(f"cannot start {argv[0]}: no such executable")
    if sys.platform == "linux":
        argv = [sys.executable, "-I", str(WATCHDOG), str(os.getpid()), "--", *argv]
    try:
        return subprocess.Popen(
            argv,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT if log == subprocess.PIPE else log,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    except OSError as err:
        raise ProcessError(f"cannot start {cmd[0]}: {err}") from None


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop ``proc`` and whatever it started: SIGTERM, then SIGKILL after ``grace_s`` seconds.

    Flower's own children (SuperExec, ServerApp and ClientApp processes) run in sessions of
    their own, so they are collected before the signal and stopped with their parent.
    """
    if proc.poll() is not None:
        return
    tree = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)
    for pid in tree:  # anything left behind (an orphaned ServerApp) must not keep writing
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def check_port_free(host: str, port: int, option: str) -> None:
    """Fail, naming ``option``, if something already listens on ``host:port``."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ProcessError(f"`{option}`: cannot use {host}:{port}: {err.strerror}") from None


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; fail if ``proc`` exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessError(f"{what} exited with code {proc.returncode} while starting")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise ProcessError(f"{what} did not listen on port {port} within {timeout_s:.0f} s")
