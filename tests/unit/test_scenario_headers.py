"""A scenario file's header says what it runs: names in it must be the ones fedft has."""

import re
from pathlib import Path

from fedft.data import BUILTIN_KEYS

ROOT = Path(__file__).resolve().parents[2]


def header(path):
    lines = path.read_text().splitlines()
    return " ".join(line.lstrip("#").strip() for line in lines if line.startswith("#"))


def test_default_header_names_the_builtin_operations():
    text = header(ROOT / "simulations" / "default.toml")
    listed = re.search(r"one\s+operation each: ([a-z, ]+?):", text)
    assert listed is not None, text
    names = [n.strip() for n in listed.group(1).split(",")]
    assert sorted(names) == sorted(BUILTIN_KEYS)


def test_every_scenario_header_has_purpose_command_and_numbers():
    for path in sorted((ROOT / "simulations").glob("*.toml")):
        text = header(path)
        for part in ("Purpose:", "Command:", "Numbers:"):
            assert part in text, f"{path.name} has no {part!r}"
