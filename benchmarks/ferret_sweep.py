"""Tune Ferret's settings fast: the default scenario's rounds in one process, without Flower.

Every client trains every round (the default scenario's ``fraction_train = 1``), in order, with
the simulation's own functions (``train_local`` with each round's batch seed,
``client_coordinates`` and the wire codec, ``client_slots``, ``aggregate_coordinates``,
``apply_round_``, the global eval), so a setting's eval losses are those of ``fedft simulate``
(checked: fedit and ferret K = 32, int8, lr 0.5 give the simulation's 0.832 and 1.481 on seed 0)
in a fraction of the time. A tuning aid: docs/ferret.md's final figures come from real
simulations (``benchmarks/ferret.py``).

    .venv/bin/python benchmarks/ferret_sweep.py --seeds 0,1 --setting "ferret.pool_size=32,
        ferret.coord_encoding='int8'" --setting ferret.pool_size=64   # a line per setting, seed

Prints, per setting and seed, the final eval loss, the share of fedit's drop (fedit is run once
per seed) and the uplink bytes (the encoded replies; fedit's as its fp32 factors).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from clients.runtimes.torch_lora import client_datasets, client_model
from fedft.adapters import get_factors, set_factors_
from fedft.config import load_scenario
from fedft.data import encode_examples
from fedft.evaluation import eval_batch_size
from fedft.ferret.aggregate import (
    FerretRound,
    aggregate_coordinates,
    apply_round_,
    client_coordinates,
    client_slots,
)
from fedft.ferret.blocks import state_blocks
from fedft.models import initial_factors
from fedft.task import batch_seed, federated_data
from fedft.train import evaluate, train_local
from fedft.wire.ferret import decode_ferret_reply, encode_ferret_reply
from fedft.wire.order import in_zo_order
from fedft.zo.seeds import seed_pool_id

ROOT = Path(__file__).resolve().parents[1]


def run(strategy: str, seed: int, rounds: int, overrides: list[str]) -> tuple[list[float], int]:
    """Eval loss after each round (round 0 first) and the uplink bytes of all replies."""
    sc = load_scenario(
        ROOT / "simulations/default.toml",
        [f"run.seed={seed}", f"federation.num_rounds={rounds}", *overrides],
    )
    model, tokenizer = client_model(sc, 0)
    data = sc.data
    held_out = encode_examples(
        list(federated_data(sc).global_eval),
        tokenizer,
        data.max_length,
        template=data.template,
        chat=data.chat,
    )
    cpu, ferret = torch.device("cpu"), sc.ferret
    state = initial_factors(model)

    def eval_loss(factors: dict[str, torch.Tensor]) -> float:
        set_factors_(model, factors)
        return evaluate(model, held_out, eval_batch_size(sc), cpu).loss

    losses, up = [eval_loss(state)], 0
    for r in range(1, rounds + 1):
        ends, weights, slots = [], [], []
        for p in range(sc.federation.num_clients):
            train_set, _ = client_datasets(sc, p)
            set_factors_(model, state)
            train_local(model, train_set, sc.train, batch_seed(sc, r, p), cpu, lr=sc.train.lr)
            end = get_factors(model)
            weights.append(float(len(train_set)))
            if strategy == "fedit":
                ends.append(end)
                up += 4 * sum(t.numel() for t in end.values())
                continue
            blocks = state_blocks(state, ferret.block_size)
            window = {"round": r, "client": p, "pool_size": ferret.pool_size}
            coords = client_coordinates(
                in_zo_order(state), in_zo_order(end), blocks, run_seed=seed, **window
            )
            pool_id = seed_pool_id(seed, r, ferret.pool_size)
            payload = encode_ferret_reply(
                coords, pool_id=pool_id, round=r, client=p, encoding=ferret.coord_encoding
            )
            up += len(payload)
            sent = decode_ferret_reply(
                payload, num_blocks=len(blocks), pool_size=ferret.pool_size
            ).coordinates
            slots.append(
                client_slots(sent, blocks, pool_id=pool_id, scaling=ferret.scaling, **window)
            )
        if strategy == "fedit":
            p_k = np.array(weights) / sum(weights)
            state = {k: sum(w * e[k] for w, e in zip(p_k, ends, strict=True)) for k in state}
        else:
            state = {k: t.clone() for k, t in state.items()}
            entry = FerretRound(r, ferret.pool_size, aggregate_coordinates(slots, weights))
            blocks = state_blocks(state, ferret.block_size)
            apply_round_(in_zo_order(state), blocks, entry, seed, ferret.server_lr)
        losses.append(eval_loss(state))
    return losses, up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--setting", action="append", default=[], help="comma-separated k=v")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"{'setting':>64} {'seed':>4} {'final':>6} {'drop/fedit':>10} {'bytes up':>9} {'/fedit':>7}"
    )
    for seed in [int(s) for s in args.seeds.split(",")]:
        base, base_up = run("fedit", seed, args.rounds, [])
        for setting in args.setting or [""]:
            overrides = ["federation.strategy='ferret'", *filter(None, setting.split(","))]
            losses, up = run("ferret", seed, args.rounds, overrides)
            drop = (losses[0] - losses[-1]) / (base[0] - base[-1])
            print(
                f"{setting or '(defaults)':>64} {seed:>4} {losses[-1]:6.3f} {drop:10.1%} "
                f"{up:9d} {up / base_up:7.2%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
