"""User errors end in one line naming the thing, not a traceback; string keys take their text."""

import pytest

from fedft.cli import main
from fedft.config import load_scenario


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedft: error: "), err
    return err[0]


def test_certs_into_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "certs"
    target.write_text("not a folder")
    assert main(["certs", "--out", str(target)]) == 1
    line = one_error_line(capsys)
    assert str(target) in line and "not a folder" in line
    assert target.read_text() == "not a folder"


@pytest.mark.parametrize("command", [["simulate", "--out"], ["compare", "x.toml", "--out"]])
def test_out_below_a_file_is_one_line(tmp_path, capsys, command):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main([*command, str(a_file / "run")]) == 2
    line = one_error_line(capsys)
    assert "`--out`" in line and str(a_file) in line


def test_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "runs"
    a_file.write_text("x")
    assert main(["simulate", "--set", f"run.output_dir='{a_file}'"]) == 2
    assert "`run.output_dir`" in one_error_line(capsys)


@pytest.mark.parametrize("text", ["2024-01-01", "123", "1e3", "true", "12:30:00"])
def test_a_string_key_takes_the_text(text):
    assert load_scenario(None, [f"run.name={text}"]).run.name == text
    assert load_scenario(None, [f"run.output_dir={text}"]).run.output_dir == text


def test_quoted_strings_and_other_types_still_parse_as_toml():
    scenario = load_scenario(None, ["run.name='a b'", "train.lr=1e-3", "run.seed=7"])
    assert (scenario.run.name, scenario.train.lr, scenario.run.seed) == ("a b", 1e-3, 7)
