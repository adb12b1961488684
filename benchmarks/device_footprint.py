"""A device's footprint: install size, import time and peak RSS of one training round, per runtime.

Each measurement is a fresh interpreter doing what Flower's per-message ClientApp process does on
a device: import fedft's ClientApp (``clients.app``), then train one round of the scenario with the
node's runtime from the edge bundle's initial factors, and report its own peak RSS
(``ru_maxrss``). Runs:

- ``ort``, torch-free: the ``--device-venv`` python (the ``device`` extra: no torch installed);
- ``ort``, full install: this python (torch installed, not imported by an ort node);
- ``torch``: this python, the torch LoRA runtime on the same model and data.

Usage (the bundle from ``fedft edge export --scenario FILE --out DIR``, same ``--set``s)::

    python benchmarks/device_footprint.py --bundle DIR --device-venv VENV [--scenario FILE]
        [--set KEY=VALUE ...]

Prints one row per run, then the size of each environment's site-packages (``du -s``).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
started = time.perf_counter()
import clients.app  # noqa: F401  (what the ClientApp process imports)
from clients.runtimes import runtime_for
from fedft.config import load_scenario
from fedft.edge.bundle import read_bundle
import_s = time.perf_counter() - started
scenario_path, bundle_path, backend, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
scenario = load_scenario(scenario_path, overrides)
start = read_bundle(bundle_path).initial_factors()
if backend == "torch":
    import torch
    torch.set_num_threads(scenario.simulation.threads_per_client)
    start = {k: torch.from_numpy(v) for k, v in start.items()}
runtime = runtime_for(backend, scenario.federation.spec.shared_seeds)
started = time.perf_counter()
reply = runtime.train_round(scenario, 0, start, 1, 0)
round_s = time.perf_counter() - started
print(json.dumps({
    "import_s": import_s, "round_s": round_s, "train_s": reply.metrics["train_s"],
    "train_loss": reply.metrics["train_loss"],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "torch_imported": "torch" in sys.modules,
}))
"""


def site_packages(python: str) -> Path:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 1024


def measure(python: str, args: argparse.Namespace, backend: str, env: dict) -> dict:
    cmd = [python, "-c", CHILD, str(args.scenario), str(args.bundle), backend, *args.set]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode:
        sys.exit(f"{backend} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--device-venv", type=Path, required=True)
    parser.add_argument("--scenario", type=Path, default=ROOT / "simulations" / "default.toml")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    device_python = str(args.device_venv / "bin" / "python")
    base_env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDFT_EDGE_BUNDLE": str(args.bundle)}
    runs = [
        ("ort, torch-free venv", device_python, "ort"),
        ("ort, full install", sys.executable, "ort"),
        ("torch, full install", sys.executable, "torch"),
    ]
    print(f"scenario {args.scenario.name} {' '.join(args.set)}")
    header = "run                    import_s  round_s  train_s  peak_rss_mb  torch  train_loss"
    print(header)
    for name, python, backend in runs:
        r = measure(python, args, backend, base_env)
        print(
            f"{name:<22} {r['import_s']:8.1f} {r['round_s']:8.1f} {r['train_s']:8.1f} "
            f"{r['peak_rss_mb']:12.0f}  {'yes' if r['torch_imported'] else 'no':>5}  "
            f"{r['train_loss']:.4f}"
        )
    for name, python in (("device venv", device_python), ("full install", sys.executable)):
        path = site_packages(python)
        print(f"site-packages of the {name}: {du_mb(path):.0f} MB ({path})")


if __name__ == "__main__":
    main()
