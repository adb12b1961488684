"""The conventions every ``fedft`` command follows, in one place.

- A command that runs or builds from a scenario takes it as an optional first argument,
  ``fedft simulate [SCENARIO]``, or as ``--scenario SCENARIO`` (the same thing); without one it
  uses ``simulations/default.toml``.
- ``--set KEY=VALUE`` overrides a scenario key, repeatably, wherever a scenario is read.
- ``-v/--verbose`` shows what fedft hides by default: library warnings, Flower's notices,
  progress bars.
- ``--help`` shows every option's default; Ctrl-C exits with code 130, user errors with 2.

Nothing here imports more than the standard library: ``fedft --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "simulations" / "default.toml"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown in ``--help``, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or action.help is None:
            return action.help
        if "default" in action.help:  # the text already says it
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter` for itself and its subcommands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:
        """Subcommand parsers are :class:`Parser` too."""
        kwargs.setdefault("parser_class", Parser)
        return super().add_subparsers(**kwargs)


def add_scenario(parser: argparse.ArgumentParser, default: bool = True) -> None:
    """``[SCENARIO]`` and ``--scenario SCENARIO``; read both with :func:`scenario_path`."""
    what = "(default: simulations/default.toml)" if default else "(default: none)"
    parser.add_argument(
        "scenario", nargs="?", type=Path, metavar="SCENARIO", help=f"scenario TOML file {what}"
    )
    parser.add_argument(
        "--scenario",
        dest="scenario_option",
        type=Path,
        metavar="SCENARIO",
        help="the same as the SCENARIO argument",
    )
    parser.set_defaults(scenario_default=default)


def named_scenario(args: argparse.Namespace) -> Path | None:
    """The scenario the command line names (as the argument or ``--scenario``), if any."""
    from fedft.errors import ConfigError

    given, option = args.scenario, args.scenario_option
    if given is not None and option is not None and given != option:
        raise ConfigError("--scenario", f"two scenarios given: {given} and {option}")
    return given or option


def scenario_path(args: argparse.Namespace) -> Path | None:
    """The scenario the command line names, else the default (None if the command has none)."""
    path = named_scenario(args)
    if path is None and args.scenario_default and DEFAULT_SCENARIO.is_file():
        return DEFAULT_SCENARIO  # (an installed copy without the source tree: built-in defaults)
    return path


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. --set federation.num_rounds=5 (repeatable)",
    )


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose``."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show library warnings, Flower's notices and progress bars",
    )
