"""Test scaffolding: a scenario and a finished run's folder written by the real code path.

Not a test module: ``test_run_outputs.py`` and ``test_merge.py`` import it.
"""

import json

import torch

from fedft.adapters import get_factors
from fedft.config import Scenario
from fedft.models import load_base, wrap_lora
from fedft.run_outputs import base_reference, write_adapter_folder


def scenario(**sections):
    raw = {"lora": {"rank": 4, "target_modules": ["q_proj", "v_proj"]}, **sections}
    return Scenario.from_dict(raw)


def write_run(sc, run_dir, server_round=3):
    """The real code path of a run's end: base reference, then the adapter folder."""
    base, tokenizer = load_base(sc.model, sc.run.seed)
    model = wrap_lora(base, sc.lora)
    factors = {k: torch.randn_like(v) * 0.1 for k, v in get_factors(model).items()}
    run_dir.mkdir(parents=True, exist_ok=True)
    row = {"kind": "round", "round": server_round, "eval_loss": 1.25, "accuracy": 0.5}
    (run_dir / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    ref = base_reference(sc, run_dir)
    write_adapter_folder(
        model, factors, tokenizer, sc, run_dir, run_dir / "adapter", ref, server_round
    )
    return tokenizer, factors
