"""Every fedft command follows one convention (fedft.cli_common), shown in its --help."""

import argparse

import pytest

import fedft.cli as cli
from fedft.cli_common import DEFAULT_SCENARIO, scenario_path

SCENARIO_COMMANDS = [["simulate"], ["compare"], ["server"], ["edge", "export"]]


def leaf_parsers(parser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from leaf_parsers(child, (*path, name))


def options(parser):
    return {s: a for a in parser._actions for s in a.option_strings}


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("fedft ")


def test_every_command_has_verbose_and_every_scenario_reader_has_set_with_help():
    for path, parser in leaf_parsers(cli._parser()):
        opts = options(parser)
        assert "-v" in opts and "--verbose" in opts, path
        if "--scenario" in opts:
            assert opts["--set"].help, path


@pytest.mark.parametrize("command", SCENARIO_COMMANDS)
def test_the_scenario_is_an_optional_argument_or_an_option(command):
    parser = cli._parser()
    as_argument = parser.parse_args([*command, "x.toml"])
    as_option = parser.parse_args([*command, "--scenario", "x.toml"])
    assert (
        scenario_path(as_argument) == scenario_path(as_option) == type(DEFAULT_SCENARIO)("x.toml")
    )
    # Without one: simulations/default.toml, so `edge export` then `edge info` agree.
    assert scenario_path(parser.parse_args(command)) == DEFAULT_SCENARIO


def test_edge_info_checks_only_against_a_named_scenario():
    args = cli._parser().parse_args(["edge", "info", "bundle"])
    assert scenario_path(args) is None
    args = cli._parser().parse_args(["edge", "info", "bundle", "s.toml"])
    assert str(scenario_path(args)) == "s.toml"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0,1,2)" in text and "(default: runs/compare)" in text


@pytest.mark.parametrize("command", ["compare", "merge", "certs"])
def test_ctrl_c_exits_130(monkeypatch, capsys, command):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_compare", interrupted)
    monkeypatch.setattr(cli, "_merge", interrupted)
    monkeypatch.setattr(cli.deploy_cli, "_certs", interrupted)
    argv = {"compare": ["compare"], "merge": ["merge", "r", "--out", "o"], "certs": ["certs"]}
    assert cli.main(argv[command]) == 130
