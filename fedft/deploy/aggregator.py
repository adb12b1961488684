"""``fedft server``: a Flower SuperLink, and fedft's run submitted to it with ``flwr run``.

One call is one run, top to bottom: check the scenario, certificates and keys; start the
SuperLink; wait until it listens; register the SuperNodes' keys; submit the app with the run
config (``scenario``, ``set``); print how devices join; stream the run's logs until it ends;
stop the SuperLink. Its state (``superlink.db``), log and private ``FLWR_HOME`` live in the
state folder, so a server that is killed and started again with ``--resume RUN_DIR`` finds its
SuperNodes still connected and continues the run folder from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from fedft.config import Scenario, load_scenario, read_toml
from fedft.deploy import control
from fedft.deploy.certs import CA_CERT, SERVER_CERT, SERVER_KEY, CertError, server_names
from fedft.deploy.processes import (
    ProcessError,
    ServerTls,
    check_port_free,
    flower_env,
    host_port,
    start,
    stop,
    superlink_command,
    wait_for_port,
)
from fedft.local_files import check_local_files
from fedft.privacy.plan import settings_line
from fedft.run_folder import check_same_scenario

log = logging.getLogger("fedft")
APP_DIR = Path(__file__).resolve().parents[2]  # the Flower app: pyproject.toml [tool.flwr.app]
STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ServerOptions:
    """What ``fedft server`` was asked for (paths as given; validated by :func:`serve`)."""

    scenario: Path | None
    overrides: tuple[str, ...]
    certs: Path
    insecure: bool
    address: str
    port: int
    control_port: int
    auth_keys: Path | None
    resume: Path | None
    state: Path | None
    app: Path
    verbose: bool = False  # the run's ServerApp and ClientApps show library and Flower notices


def server_tls(certs: Path) -> ServerTls:
    """The certificate files ``fedft certs`` wrote into ``certs``, or an error naming them."""
    tls = ServerTls(certs / CA_CERT, certs / SERVER_CERT, certs / SERVER_KEY)
    for path in (tls.ca_cert, tls.cert, tls.key):
        if not path.is_file():
            raise CertError(
                f"`--certs`: no {path} (make it with `fedft certs --out {certs} --host NAME`, "
                "or run without TLS with --insecure)"
            )
    return ServerTls(tls.ca_cert.resolve(), tls.cert.resolve(), tls.key.resolve())


def read_public_keys(path: Path) -> list[str]:
    """OpenSSH EC public keys, one a line (``#`` comments and blank lines skipped)."""
    if not path.is_file():
        raise CertError(f"`--auth-keys`: no file {path}")
    keys = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = load_ssh_public_key(line.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm) as err:
            raise CertError(f"`--auth-keys`: {path} line {number}: {err}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CertError(f"`--auth-keys`: {path} line {number}: not an EC (NIST curve) key")
        keys.append(line)
    if not keys:
        raise CertError(f"`--auth-keys`: {path} holds no public key")
    return keys


def _output_dir(scenario: Scenario, resume: Path | None) -> str:
    """``run.output_dir`` as the ServerApp gets it: absolute, since it runs in Flower's process.

    A resumed run keeps its folder's own spelling of the same folder (a run folder that
    ``fedft simulate`` started records a relative one), so the scenarios compare equal.
    """
    absolute = str(Path(scenario.run.output_dir).resolve())
    if resume is not None:
        stored = read_toml(resume / "config.toml").get("run", {}).get("output_dir")
        if isinstance(stored, str) and str(Path(stored).resolve()) == absolute:
            return stored
    return absolute


def resolve_scenario(opts: ServerOptions) -> tuple[Path, list[str], Scenario]:
    """The scenario file, the overrides the ServerApp gets, and the validated scenario.

    Paths are made absolute: the ServerApp runs in Flower's own process. A resumed run uses the
    run folder's own scenario unless one is named, like ``fedft simulate --resume``, and a
    different one is refused here, before any process starts.
    """
    overrides = list(opts.overrides)
    if opts.resume is not None:
        if not (opts.resume / "config.toml").is_file():
            raise CertError(f"`--resume`: {opts.resume} is not a fedft run folder")
        path = opts.scenario or opts.resume / "config.toml"
        overrides.append(f"run.resume_dir={json.dumps(str(opts.resume.resolve()))}")
    else:
        path = opts.scenario or APP_DIR / "simulations" / "default.toml"
    scenario = load_scenario(path, overrides)
    output_dir = _output_dir(scenario, opts.resume)
    if output_dir != scenario.run.output_dir:
        overrides.append(f"run.output_dir={json.dumps(output_dir)}")
        scenario = load_scenario(path, overrides)
    check_local_files(scenario)
    if opts.resume is not None:
        check_same_scenario(scenario, opts.resume)
    return Path(path).resolve(), overrides, scenario


def client_command(opts: ServerOptions, tls: ServerTls | None, scenario: Scenario) -> str:
    """The ``fedft client`` line a device runs to join (N is its partition id)."""
    host = opts.address.strip("[]")
    if host in ("0.0.0.0", "::"):
        names = server_names(tls.cert) if tls is not None else []
        host = names[0] if names else socket.getfqdn()
    certs = f"--certs {shlex.quote(str(tls.ca_cert))}" if tls is not None else "--insecure"
    line = f"fedft client --server {host_port(host, opts.port)} {certs} --partition-id N "
    line += f"--num-partitions {scenario.federation.num_clients}"
    if opts.auth_keys is not None:
        line += " --auth-key supernode-N.key"
    return line


def _write_run_config(
    state: Path, scenario_path: Path, overrides: list[str], verbose: bool = False
) -> Path:
    """The run config as a TOML file: ``flwr run -c FILE`` keeps any quoting intact."""
    path = state / "run-config.toml"
    run_config = {"scenario": str(scenario_path), "set": shlex.join(overrides), "verbose": verbose}
    path.write_text(tomli_w.dumps(run_config))
    return path


def _new_run_dir(output_dir: Path, before: set[Path], since: float) -> Path | None:
    """The run folder the ServerApp created after ``since`` (None until it exists)."""
    if not output_dir.is_dir():
        return None
    for folder in output_dir.iterdir():
        config = folder / "config.toml"
        if folder not in before and config.is_file() and config.stat().st_mtime >= since:
            return folder
    return None


def serve(opts: ServerOptions) -> int:
    """Run ``fedft server``: return 0 once the run completes (see the module docstring)."""
    scenario_path, overrides, scenario = resolve_scenario(opts)
    tls = None if opts.insecure else server_tls(opts.certs)
    keys = read_public_keys(opts.auth_keys) if opts.auth_keys is not None else []
    if keys and tls is None:
        raise CertError("`--auth-keys`: SuperNode authentication needs TLS: drop --insecure")
    if not (opts.app / "pyproject.toml").is_file():
        raise CertError(f"`--app`: {opts.app} has no pyproject.toml (the fedft source folder)")
    output_dir = Path(scenario.run.output_dir)
    state = (opts.state or output_dir / "superlink").resolve()
    state.mkdir(parents=True, exist_ok=True)
    env = flower_env(flwr_home=state / "flwr")
    control.write_connection(state / "flwr", opts.control_port, tls.ca_cert if tls else None)
    run_config = _write_run_config(state, scenario_path, overrides, opts.verbose)

    check_port_free(opts.address, opts.port, "--port")
    check_port_free("127.0.0.1", opts.control_port, "--control-port")
    fleet = host_port(opts.address, opts.port)
    cmd = superlink_command(fleet, opts.control_port, state / "superlink.db", tls, bool(keys))
    with (state / "superlink.log").open("ab") as superlink_log:
        superlink = start(cmd, env, superlink_log)
    log_stream = None
    run_dir = opts.resume.resolve() if opts.resume is not None else None
    try:
        what = f"the SuperLink (log: {state / 'superlink.log'})"
        wait_for_port(opts.control_port, superlink, STARTUP_TIMEOUT_S, what)
        mode = "TLS" if tls else "INSECURE, no TLS"
        log.info("fedft: SuperLink up: Fleet API (gRPC, %s) on %s; log %s", mode, fleet, state)
        if keys:
            control.register_supernodes(keys, env)
            log.info("fedft: SuperNode authentication on: %d key(s) registered", len(keys))
        if scenario.privacy.enabled:
            log.info("fedft: %s", settings_line(scenario))
        log.info("fedft: devices join with (N = 0 .. %d):", scenario.federation.num_clients - 1)
        log.info("  %s", client_command(opts, tls, scenario))
        before = set(output_dir.iterdir()) if output_dir.is_dir() else set()
        submitted = time.time()
        run_id = control.submit_run(opts.app, run_config, env)
        log.info("fedft: run %d submitted (scenario %s)", run_id, scenario_path)
        log_stream = control.stream_logs(run_id, env)
        status = "running"
        while status in ("pending", "starting", "running"):
            if superlink.poll() is not None:
                raise ProcessError(
                    f"the SuperLink exited (code {superlink.returncode}): see {state}"
                )
            if run_dir is None and (run_dir := _new_run_dir(output_dir, before, submitted)):
                log.info("fedft: run folder %s", run_dir)
            if log_stream.poll() is None:
                time.sleep(0.5)
                continue
            status = control.run_status(run_id, env)
            time.sleep(2.0 if status in ("pending", "starting", "running") else 0.0)
        if status != "finished:completed":
            raise ProcessError(f"run {run_id} ended {status}: see `flwr log` above and {state}")
        log.info("fedft: run %d completed; run folder %s", run_id, run_dir)
        return 0
    except KeyboardInterrupt:
        hint = f" plus --resume {run_dir}" if run_dir else ""
        log.info("fedft: server stopped; continue the run with the same command%s", hint)
        return 130
    finally:
        if log_stream is not None:
            stop(log_stream, grace_s=5.0)
        stop(superlink)
