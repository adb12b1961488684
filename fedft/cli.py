"""The ``fedft`` command line: the one module of ``fedft/`` that wires in the Flower apps.

The library under ``fedft/`` imports neither ``server/`` nor ``clients/``; this command-line layer
is where they meet it (``fedft simulate`` hands ``server.app.make_server_app`` and
``clients.app.app`` to :func:`fedft.simulate.simulate`; an interrupted run's checkpoint is read with
``server.checkpoint``). ``tests/unit/test_import_layers.py`` holds every other module to that.

User errors (a bad scenario, a missing file) print one line ``fedft: error: ...`` and exit with
code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from fedft.cli_common import (
    Parser,
    add_overrides,
    add_scenario,
    add_verbose,
    named_scenario,
    scenario_path,
)
from fedft.console import console_logging, quiet_libraries
from fedft.deploy import cli as deploy_cli
from fedft.edge import cli as edge_cli
from fedft.errors import FedftError, Interrupted

if TYPE_CHECKING:
    from fedft.config import Scenario


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fedft",
        description="Federated and on-device fine-tuning of language models. Every command "
        "that reads a scenario takes it as [SCENARIO] or --scenario (default: "
        "simulations/default.toml) and --set KEY=VALUE overrides; -v shows library warnings "
        "and Flower's notices; Ctrl-C exits with code 130, a user error with 2.",
    )
    parser.add_argument("--version", action="version", version=f"fedft {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sim = sub.add_parser("simulate", help="run a scenario on this machine (Flower simulation)")
    add_scenario(sim)
    add_overrides(sim)
    sim.add_argument(
        "--out", type=Path, help="run folder (default: <run.output_dir>/<run.name>-<time>)"
    )
    sim.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run folder from its checkpoint"
    )
    add_verbose(sim)

    cmp = sub.add_parser("compare", help="run strategies over seeds; write a table and a plot")
    add_scenario(cmp)
    add_overrides(cmp)
    cmp.add_argument("--strategies", default="fedit,lora_fair", help="comma-separated strategies")
    cmp.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    cmp.add_argument(
        "--baseline", default="", help="strategy the paired differences subtract (default: first)"
    )
    cmp.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder")
    add_verbose(cmp)
    _add_merge_parser(sub)
    deploy_cli.add_parsers(sub)
    edge_cli.add_parser(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedft")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def _add_merge_parser(sub: argparse._SubParsersAction) -> None:
    merge = sub.add_parser("merge", help="fold a run's adapter into its base; save a HF folder")
    merge.add_argument("adapter", type=Path, help="a run folder or an adapter folder")
    merge.add_argument("--out", type=Path, required=True, help="new folder for the merged model")
    merge.add_argument(
        "--base", type=Path, help="base model folder, if it moved (default: the adapter's)"
    )
    add_verbose(merge)


def _merge(args: argparse.Namespace) -> int:
    from fedft.merge import merge_adapter

    out = merge_adapter(args.adapter, args.out, args.base)
    print(f"merged model: {out}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from fedft.config import load_scenario
    from fedft.console import long_step
    from fedft.local_files import check_local_files
    from fedft.run_folder import check_same_scenario, check_writable_folder, default_run_dir

    # First what needs no torch, transformers or Ray: the scenario, the run folder.
    path = scenario_path(args)
    overrides = list(args.overrides)
    if args.resume is not None:  # the run's own scenario, unless one is named
        path = named_scenario(args) or args.resume / "config.toml"
        overrides.append(f"run.resume_dir={json.dumps(str(args.resume))}")
    scenario = load_scenario(path, overrides)
    if args.resume is not None:
        check_same_scenario(scenario, args.resume)
        run_dir = args.resume
    elif args.out is not None:
        check_writable_folder(args.out, "--out")
        run_dir = args.out
    else:
        check_writable_folder(Path(scenario.run.output_dir), "run.output_dir")
        run_dir = default_run_dir(scenario)
    check_local_files(scenario)

    # Then what needs the libraries, still before any process starts: clients, data, the model.
    from fedft.models import load_peft_model
    from fedft.quantize import check_clients
    from fedft.task import federated_data
    from fedft.zo.trainable import check_trained_modules

    check_clients(scenario)  # a quantization this machine cannot run fails here, not in a worker
    federated_data(scenario)  # data errors (files, partitions)
    # Model errors (a target module it lacks, an empty folder); the server reuses this load.
    with long_step("loading the base model"):
        model, _ = load_peft_model(scenario.model, scenario.lora, scenario.run.seed)
    check_trained_modules(model, scenario)  # zo / ferret trainable_modules name real modules

    try:
        simulate_scenario(scenario, run_dir, verbose=args.verbose)
    except Interrupted:
        _report_interrupted(run_dir, scenario.federation.num_rounds)
    return 0


def simulate_scenario(scenario: Scenario, run_dir: Path, verbose: bool = False) -> Path:
    """Run ``scenario`` on Flower's simulation engine with fedft's ServerApp and ClientApp.

    Returns
    -------
    Path
        The run folder.
    """
    from clients.app import app as client_app
    from fedft.simulate import simulate
    from server.app import make_server_app

    return simulate(scenario, run_dir, make_server_app, client_app, verbose=verbose)


def _report_interrupted(run_dir: Path, num_rounds: int) -> NoReturn:
    """Say what an interrupted run keeps and how to continue it; exit 130 at once."""
    from server.checkpoint import checkpoint_round

    kept = checkpoint_round(run_dir)
    if kept is None:
        print(
            f"interrupted before round 1 finished: nothing to resume in {run_dir}", file=sys.stderr
        )
    else:
        print(f"interrupted: {run_dir} keeps round {kept} of {num_rounds}", file=sys.stderr)
        print(
            f"continue with: fedft simulate --resume {shlex.quote(str(run_dir))}", file=sys.stderr
        )
    sys.stdout.flush()
    sys.stderr.flush()
    # Flower's client threads may still wait on the stopped Ray workers; the run folder is
    # complete and Ray is shut down, so nothing is lost by not waiting for them.
    os._exit(130)


def _compare(args: argparse.Namespace) -> int:
    from fedft.compare import compare
    from fedft.config import load_scenario
    from fedft.errors import ConfigError
    from fedft.local_files import check_local_files

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.baseline and args.baseline not in strategies:
        raise ConfigError("--baseline", f"{args.baseline!r} is not one of --strategies")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(
            "--seeds", f"expected comma-separated integers, got {args.seeds!r}"
        ) from None
    from fedft.run_folder import check_writable_folder

    check_writable_folder(args.out, "--out")
    path = scenario_path(args)
    for strategy in strategies:  # validate every run's scenario before starting any
        scenario = load_scenario(path, [*args.overrides, f"federation.strategy='{strategy}'"])
    check_local_files(scenario)
    print(compare(path, strategies, seeds, args.overrides, args.out, args.baseline or None))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedft`` console script."""
    args = _parser().parse_args(argv)
    console_logging()
    # Before transformers or Flower are imported: they read the environment this sets.
    quiet_libraries(getattr(args, "verbose", False))
    try:
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "merge":
            return _merge(args)
        if args.command == "edge":
            return edge_cli.run(args)
        if args.command in deploy_cli.COMMANDS:
            return deploy_cli.run(args)
    except KeyboardInterrupt:  # Ctrl-C before a simulation started: nothing was written
        print("fedft: interrupted", file=sys.stderr)
        return 130
    except FedftError as err:
        print(f"fedft: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder that cannot be read or written: no traceback
        print(f"fedft: error: {_os_error_text(err)}", file=sys.stderr)
        return 1
    return 2


def _os_error_text(err: OSError) -> str:
    """``path: reason`` for an OSError (``a -> b: reason`` when it names two paths)."""
    reason = err.strerror or str(err)
    if isinstance(err, FileExistsError):  # what mkdir says of a file in the folder's place
        reason = "exists and is not a folder"
    elif isinstance(err, NotADirectoryError):
        reason = "a part of this path is a file, not a folder"
    if err.filename is None:
        return reason
    names = str(err.filename)
    if err.filename2 is not None:
        names += f" -> {err.filename2}"
    return f"{names}: {reason}"


if __name__ == "__main__":
    sys.exit(main())
