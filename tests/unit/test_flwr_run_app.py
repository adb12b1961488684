"""`flwr run .` must not install: every dependency has a `[tool.uv]` override that drops it."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def name(requirement):
    return re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_dropped_for_flowers_runtime_install():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        deps += extra
    overrides = project["tool"]["uv"]["override-dependencies"]
    # Python < 3.11 is outside requires-python, so uv drops the package from the resolution.
    assert project["project"]["requires-python"].startswith(">=3.11")
    dropped = {
        name(o) for o in overrides if o.split(";", 1)[1].strip() == "python_version < '3.11'"
    }
    assert {name(d) for d in deps} <= dropped
