"""The ``fedft certs``, ``fedft server`` and ``fedft client`` subcommands."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType

from fedft.cli_common import add_overrides, add_scenario, add_verbose, named_scenario
from fedft.config import BACKENDS
from fedft.deploy.processes import DEFAULT_CONTROL_PORT, DEFAULT_FLEET_PORT, DEFAULT_RUNTIME_PORT

COMMANDS = ("certs", "server", "client")
DEFAULT_MAX_WAIT_S = 600.0  # a server restarted with --resume is back well within it


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``certs``, ``server`` and ``client`` on ``fedft``'s subparsers."""
    certs = sub.add_parser("certs", help="make a CA, a server certificate and SuperNode keys")
    certs.add_argument("--out", type=Path, default=Path("certs"), help="folder (default: certs)")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="DNS name clients dial (default: the existing server certificate's, else localhost)",
    )
    certs.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="ADDR",
        help="IP address clients dial (default: the existing certificate's, else 127.0.0.1)",
    )
    certs.add_argument(
        "--supernodes", type=int, default=0, metavar="N", help="also make N SuperNode key pairs"
    )
    certs.add_argument("--days", type=int, default=365, help="server certificate validity")

    server = sub.add_parser("server", help="start the aggregator (Flower SuperLink) and the run")
    add_scenario(server)
    add_overrides(server)
    tls = server.add_mutually_exclusive_group()
    tls.add_argument(
        "--certs", type=Path, default=Path("certs"), help="folder from fedft certs (default: certs)"
    )
    tls.add_argument("--insecure", action="store_true", help="plaintext gRPC: no TLS at all")
    server.add_argument("--address", default="0.0.0.0", help="Fleet API bind address")
    server.add_argument("--port", type=int, default=DEFAULT_FLEET_PORT, help="Fleet API port")
    server.add_argument(
        "--control-port",
        type=int,
        default=DEFAULT_CONTROL_PORT,
        help="Control API port on 127.0.0.1 (flwr run talks to it)",
    )
    server.add_argument(
        "--auth-keys", type=Path, help="admit only these SuperNodes (OpenSSH public keys)"
    )
    server.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run folder")
    server.add_argument(
        "--state", type=Path, help="SuperLink state folder (default: <run.output_dir>/superlink)"
    )
    server.add_argument("--app", type=Path, help=argparse.SUPPRESS)

    client = sub.add_parser("client", help="join a server as a device (Flower SuperNode)")
    client.add_argument("--server", required=True, metavar="HOST:PORT", help="its Fleet API")
    tls = client.add_mutually_exclusive_group()
    tls.add_argument(
        "--certs", type=Path, default=Path("certs"), help="the server's ca.pem (or its folder)"
    )
    tls.add_argument("--insecure", action="store_true", help="plaintext gRPC: no TLS at all")
    client.add_argument("--partition-id", type=int, required=True, metavar="N")
    client.add_argument("--num-partitions", type=int, required=True, metavar="M")
    client.add_argument("--backend", choices=BACKENDS, help="override the scenario's runtime")
    client.add_argument("--data", type=Path, metavar="FILE", help="this device's own data")
    client.add_argument("--auth-key", type=Path, help="SuperNode private key (fedft certs)")
    client.add_argument(
        "--runtime-port",
        type=int,
        default=DEFAULT_RUNTIME_PORT,
        help="the SuperNode's local Runtime API port (one per SuperNode on a machine)",
    )
    client.add_argument(
        "--max-wait",
        type=_seconds,
        default=DEFAULT_MAX_WAIT_S,
        metavar="S",
        help="give up after S s without reaching the server, at the start or mid-run "
        "(0: never give up)",
    )
    client.add_argument(
        "--isolation",
        choices=("process", "subprocess"),
        default="process",
        help="process (default): one long-lived ClientApp process serves every round, the "
        "model and data stay loaded (docs/deploy.md); subprocess: Flower's fresh ClientApp "
        "process per message",
    )
    for parser in (certs, server, client):
        add_verbose(parser)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM, SIGHUP stop as Ctrl-C does: children stopped, state kept


def run(args: argparse.Namespace) -> int:
    """Run the subcommand ``args.command`` (one of :data:`COMMANDS`)."""
    for name in ("SIGTERM", "SIGHUP"):  # SIGHUP: the terminal closed (absent on Windows)
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _interrupt)
    try:
        if args.command == "certs":
            return _certs(args)
        if args.command == "server":
            return _server(args)
        return _client(args)
    except KeyboardInterrupt:
        return 130


def _certs(args: argparse.Namespace) -> int:
    from fedft.deploy.certs import make_certs

    files = make_certs(args.out, args.host, args.ip, args.supernodes, args.days)
    print(f"CA certificate       {files.ca_cert}  (copy it to every client)")
    names = ", ".join(files.server_names)
    if files.server_status == "kept":
        print(f"server certificate   {files.server_cert}  kept, for {names}")
    elif files.server_status == "re-issued":
        print(
            f"server certificate   {files.server_cert}  RE-ISSUED for {names} (was for "
            f"{', '.join(files.previous_server_names)}): restart the server to use it"
        )
    else:
        print(f"server certificate   {files.server_cert}  for {names}")
    print(f"server key           {files.server_key}")
    for key in files.supernode_keys:
        print(f"SuperNode key        {key}  (copy it to one client; public key beside it)")
    if files.supernodes_pub is not None:
        print(f"SuperNode public keys {files.supernodes_pub}  (fedft server --auth-keys)")
    return 0


def _server(args: argparse.Namespace) -> int:
    from fedft.deploy.aggregator import APP_DIR, ServerOptions, serve

    opts = ServerOptions(
        scenario=named_scenario(args),
        overrides=tuple(args.overrides),
        certs=args.certs,
        insecure=args.insecure,
        address=args.address,
        port=args.port,
        control_port=args.control_port,
        auth_keys=args.auth_keys,
        resume=args.resume,
        state=args.state,
        app=args.app or APP_DIR,
        verbose=args.verbose,
    )
    return serve(opts)


def _client(args: argparse.Namespace) -> int:
    from fedft.deploy.device import ClientOptions, join

    opts = ClientOptions(
        server=args.server,
        certs=args.certs,
        insecure=args.insecure,
        partition_id=args.partition_id,
        num_partitions=args.num_partitions,
        backend=args.backend,
        data=args.data,
        auth_key=args.auth_key,
        runtime_port=args.runtime_port,
        max_wait_s=args.max_wait or None,
        verbose=args.verbose,
        isolation=args.isolation,
    )
    return join(opts)
