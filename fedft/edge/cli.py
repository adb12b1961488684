"""``fedft edge``: build an edge bundle for devices, or show one.

Hooked into :mod:`fedft.cli` with :func:`add_parser` and :func:`run`::

    fedft edge export [simulations/default.toml] --out bundles/default
    fedft edge info bundles/default [simulations/default.toml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedft.cli_common import add_overrides, add_scenario, add_verbose, scenario_path
from fedft.config import load_scenario


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``edge`` command (``export``, ``info``) to the ``fedft`` subcommands."""
    edge = subparsers.add_parser("edge", help="build or show an ONNX Runtime edge bundle")
    sub = edge.add_subparsers(dest="edge_command", required=True)
    export = sub.add_parser(
        "export", help="export base + LoRA to ONNX and build ONNX Runtime training artifacts"
    )
    add_scenario(export)
    add_overrides(export)
    export.add_argument(
        "--out", type=Path, help="bundle folder (default: the cache folder of the configuration)"
    )
    export.add_argument("--force", action="store_true", help="replace an existing --out folder")
    info = sub.add_parser("info", help="print a bundle's manifest; check it against a scenario")
    info.add_argument("bundle", type=Path, help="bundle folder")
    add_scenario(info, default=False)  # given: check the bundle against it
    add_overrides(info)
    for parser in (export, info):
        add_verbose(parser)
    return edge


def _sizes(bundle_path: Path, files: dict[str, int]) -> str:
    lines = [f"  {name:<32} {size / 2**20:9.2f} MiB" for name, size in sorted(files.items())]
    total = sum(files.values())
    return "\n".join([*lines, f"  {'total':<32} {total / 2**20:9.2f} MiB  ({bundle_path})"])


def run(args: argparse.Namespace) -> int:
    """Run ``fedft edge ...``; return the exit code (errors raise :class:`FedftError`)."""
    from fedft.edge.bundle import check_bundle, read_bundle

    if args.edge_command == "export":
        from fedft.console import long_step
        from fedft.edge.cache import default_bundle_dir
        from fedft.edge.export import build_bundle
        from fedft.local_files import check_local_files

        scenario = load_scenario(scenario_path(args), args.overrides)
        check_local_files(scenario)
        out = args.out or default_bundle_dir(scenario)
        with long_step("building the edge bundle (ONNX export, training artifacts)"):
            bundle = build_bundle(scenario, out, force=args.force)
        print(
            f"edge bundle {bundle.key[:16]} for {scenario.model.source} model, "
            f"LoRA rank {scenario.lora.rank}: {len(bundle.factor_layout)} factors"
        )
        print(_sizes(bundle.path, bundle.manifest["files"]))
        return 0
    bundle = read_bundle(args.bundle)
    config = bundle.manifest["config"]
    print(f"format {bundle.manifest['format']}, key {bundle.key}")
    print(f"model {config['model']}, lora {config['lora']}")
    print(_sizes(bundle.path, bundle.manifest["files"]))
    path = scenario_path(args)
    if path is not None or args.overrides:
        check_bundle(bundle, load_scenario(path, args.overrides))
        print("matches the scenario")
    return 0
