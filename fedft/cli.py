"""The ``fedft`` command line.

User errors (a bad scenario, a missing file) print one line ``fedft: error: ...`` and exit with
code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedft.errors import FedftError
from fedft.report import console_logging

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "simulations" / "default.toml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedft", description="Federated and on-device fine-tuning of language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a scenario on this machine (Flower simulation)")
    sim.add_argument(
        "scenario", nargs="?", help="scenario TOML file (default: simulations/default.toml)"
    )
    sim.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. --set federation.num_rounds=5 (repeatable)",
    )
    sim.add_argument(
        "--out", type=Path, help="run folder (default: <run.output_dir>/<name>-<time>)"
    )
    sim.add_argument("-v", "--verbose", action="store_true", help="show Flower's own logs")
    return parser


def _simulate(args: argparse.Namespace) -> int:
    from fedft.config import check_local_files, load_scenario
    from fedft.task import federated_data

    path = args.scenario or (DEFAULT_SCENARIO if DEFAULT_SCENARIO.is_file() else None)
    scenario = load_scenario(path, args.overrides)
    check_local_files(scenario)
    federated_data(
        scenario
    )  # data errors (files, partitions) surface here, before any process starts

    from fedft.simulate import simulate
    from server.federation import default_run_dir

    simulate(scenario, args.out or default_run_dir(scenario), verbose=args.verbose)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedft`` console script."""
    args = _parser().parse_args(argv)
    console_logging()
    try:
        if args.command == "simulate":
            return _simulate(args)
    except FedftError as err:
        print(f"fedft: error: {err}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
