"""``fedft client``: a Flower SuperNode that runs fedft's ClientApp on this device.

The SuperNode dials the server's Fleet API over gRPC (TLS with the server's CA unless
``--insecure``), optionally proves its identity with a registered key, and hands the ClientApp
its node config. These keys are what the ClientApp reads from ``context.node_config``:

================  =================================================================
``partition-id``   this device's client index in the scenario (``--partition-id``)
``num-partitions`` how many clients the scenario has (``--num-partitions``)
``backend``        ``torch``, ``ort`` or ``zo``: overrides the scenario's for this node
``data-path``      an absolute path to this device's own data file (``--data``)
================  =================================================================
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedft.config import BACKENDS
from fedft.console import VERBOSE_ENV
from fedft.deploy.certs import CA_CERT, CertError
from fedft.deploy.processes import (
    ProcessError,
    check_port_free,
    flower_env,
    start,
    stop,
    supernode_command,
)
from fedft.deploy.supernode_output import SupernodeOutput, relay
from fedft.deploy.warm_process import WarmClientApp, warm_command
from fedft.errors import ConfigError

log = logging.getLogger("fedft")
GAVE_UP_GRACE_S = 5.0


@dataclass(frozen=True)
class ClientOptions:
    """What ``fedft client`` was asked for."""

    server: str
    certs: Path
    insecure: bool
    partition_id: int
    num_partitions: int
    backend: str | None
    data: Path | None
    auth_key: Path | None
    runtime_port: int
    max_wait_s: float | None  # None: retry an unreachable server for ever
    verbose: bool = False
    isolation: str = "process"  # one warm ClientApp process for every round; or "subprocess"


def ca_cert(certs: Path) -> Path:
    """The CA certificate: ``certs`` itself (a ``.pem`` file), or ``certs/ca.pem``."""
    path = certs if certs.is_file() or certs.suffix == ".pem" else certs / CA_CERT
    if not path.is_file():
        raise CertError(
            f"`--certs`: no CA certificate at {path} (copy the server's ca.pem here, "
            "or join a server started with --insecure using --insecure)"
        )
    return path.resolve()


def check_auth_key(path: Path) -> Path:
    """A SuperNode private key as Flower reads it (OpenSSH, EC on a NIST curve)."""
    try:
        key = load_ssh_private_key(path.read_bytes(), None)
    except OSError:
        raise CertError(f"`--auth-key`: no key file {path}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise CertError(f"`--auth-key`: {path} is not an OpenSSH private key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"`--auth-key`: {path} is not an EC key (make one with fedft certs)")
    return path.resolve()


def node_config(opts: ClientOptions) -> dict[str, int | str]:
    """The SuperNode's ``--node-config`` entries (see the module docstring)."""
    if not 0 <= opts.partition_id < opts.num_partitions:
        raise ConfigError(
            "--partition-id", f"must be in [0, {opts.num_partitions}), got {opts.partition_id}"
        )
    entries: dict[str, int | str] = {
        "partition-id": opts.partition_id,
        "num-partitions": opts.num_partitions,
    }
    if opts.backend is not None:
        if opts.backend not in BACKENDS:
            raise ConfigError("--backend", f"expected one of {BACKENDS}, got {opts.backend!r}")
        entries["backend"] = opts.backend
    if opts.data is not None:
        if not opts.data.is_file():
            raise ConfigError("--data", f"no data file at {opts.data}")
        entries["data-path"] = str(opts.data.resolve())
    return entries


def _wait(
    supernode: subprocess.Popen, output: SupernodeOutput, app: WarmClientApp | None
) -> int | None:
    """The SuperNode's exit code; None if it gave up on the server but did not exit.

    Flower 1.39's SuperNode that gives up mid-run logs the failed call and then hangs (it does
    not exit): :data:`GAVE_UP_GRACE_S` seconds after giving up it is stopped. Meanwhile the
    long-lived ClientApp process ``app`` is started again whenever it exits.
    """
    while True:
        try:
            return supernode.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if app is not None:
            app.check()
        gave_up = output.gave_up_at
        if gave_up is not None and time.monotonic() - gave_up > GAVE_UP_GRACE_S:
            return None


def _runtime_api_up(supernode: subprocess.Popen, port: int, timeout_s: float = 120.0) -> bool:
    """Wait until the SuperNode serves its Runtime API on ``port``; False if it exited first."""
    deadline = time.monotonic() + timeout_s
    while supernode.poll() is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        if time.monotonic() > deadline:
            raise ProcessError(f"the SuperNode did not serve port {port} within {timeout_s:.0f} s")
        time.sleep(0.2)
    return False


def join(opts: ClientOptions) -> int:
    """Run the SuperNode until it exits or this process is stopped; return its exit code."""
    entries = node_config(opts)
    ca = None if opts.insecure else ca_cert(opts.certs)
    key = check_auth_key(opts.auth_key) if opts.auth_key is not None else None
    if key is not None and ca is None:
        raise CertError("`--auth-key`: SuperNode authentication needs TLS: drop --insecure")
    check_port_free("127.0.0.1", opts.runtime_port, "--runtime-port")  # where the SuperNode binds
    cmd = supernode_command(
        opts.server, ca, entries, opts.runtime_port, key, opts.max_wait_s, opts.isolation
    )
    mode = "TLS" if ca is not None else "INSECURE, no TLS"
    log.info("fedft: joining %s (gRPC, %s) as partition %d", opts.server, mode, opts.partition_id)
    output = SupernodeOutput(opts.server, opts.max_wait_s, opts.verbose)
    env = flower_env()
    if opts.verbose:  # the ClientApps this SuperNode starts show library and Flower notices
        env[VERBOSE_ENV] = "1"
    supernode = start(cmd, env, subprocess.PIPE)
    assert supernode.stdout is not None
    copying = relay(supernode.stdout, output, sys.stderr)
    app = None
    try:
        if opts.isolation == "process" and _runtime_api_up(supernode, opts.runtime_port):
            app = WarmClientApp(warm_command(opts.runtime_port, opts.backend), env, sys.stderr)
            app.start()  # one ClientApp process serves every round
        code = _wait(supernode, output, app)
    except KeyboardInterrupt:
        return 130
    finally:
        if app is not None:
            app.stop()
        stop(supernode)
        copying.join(timeout=10)  # everything below the SuperNode is gone: the pipe closes
    if (gave_up := output.gave_up_message()) is not None:
        raise ProcessError(gave_up)
    if code is None or code != 0:
        raise ProcessError(f"the SuperNode exited with code {code} (its log is above)")
    return 0
