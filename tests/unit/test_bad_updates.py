"""A corpus of bad updates against the FedIT strategy: each is dropped, named, and changes nothing.

Every case sends three good first-order replies (ArrayRecord, LoraUpdate fp32, LoraUpdate int8),
one good zero-order reply, and one bad reply from node 99. The aggregate must be bit-identical to
the aggregate of the good replies alone, and a warning must name node 99.
"""

import logging

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from replies import Grid, array_reply, update_reply, zo_edit, zo_reply

from fedft.algorithms.validation import norm_outliers, update_norm
from fedft.config import ZoSection
from fedft.flower_records import factors_to_record, record_to_factors
from fedft.v1 import update_pb2
from fedft.wire.update import encode_update
from fedft.wire.zo_reply import encode_zo_reply
from fedft.zo.seeds import ZoRecord, derived_seed_indices, seed_pool_id
from server.strategies.fedit import FedIT

A, B = "base_model.model.q.lora_A.weight", "base_model.model.q.lora_B.weight"
ROUND, RUN_SEED, BAD, NUM_CLIENTS = 1, 5, 99, 6
NODES = [1, 2, 3, 4, BAD]  # what the Grid offers when the strategy samples
ZO = ZoSection(pool_size=64, local_steps=4)
PID = seed_pool_id(RUN_SEED, ROUND, ZO.pool_size)
GLOBAL = {
    A: torch.randn(4, 16, generator=torch.Generator().manual_seed(0)),
    B: torch.randn(16, 4, generator=torch.Generator().manual_seed(1)),
}


def moved(seed, size=0.1, state=GLOBAL):
    """``state`` plus Gaussian noise of standard deviation ``size`` (a client's round)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + size * torch.randn(v.shape, generator=g) for k, v in state.items()}


def zo_payload(client=NUM_CLIENTS - 1, steps=ZO.local_steps, **overrides):
    indices = derived_seed_indices(PID, ROUND, client, steps, ZO.pool_size)
    records = [ZoRecord(i, 3.0 - t) for t, i in enumerate(indices)]
    args = {"pool_id": PID, "round": ROUND, "client": client, "pool_size": ZO.pool_size}
    args["grad_scale"] = ZO.grad_scale
    return encode_zo_reply(records, **(args | overrides))


def proto(factors=GLOBAL, wire="fp32", **edit):
    """A LoraUpdate of ``factors`` with its first tensor's fields (or ``version``) replaced."""
    message = update_pb2.LoraUpdate()
    message.ParseFromString(encode_update(factors, wire))
    if "version" in edit:
        message.version = edit.pop("version")
    for name, value in edit.items():
        setattr(message.tensors[0], name, value)
    return message.SerializeToString()


def good_replies():
    return [
        array_reply(1, moved(1), examples=30),
        update_reply(2, encode_update(moved(2), "fp32"), examples=20),
        update_reply(3, encode_update(moved(3), "int8"), examples=10),
        zo_reply(4, zo_payload(client=3), examples=5),
    ]


NAN_A = {A: GLOBAL[A].clone().index_fill_(0, torch.tensor([1]), float("nan")), B: GLOBAL[B]}
INF_B = {A: GLOBAL[A], B: GLOBAL[B].clone().index_fill_(1, torch.tensor([2]), float("inf"))}
INF_SCALES = np.float32([1.0, float("inf"), 1.0, 1.0]).tobytes()
HUGE_SCALES = np.float32([3e38] * 4).tobytes()  # finite, but code * scale overflows
EXPLICIT = zo_payload(seed_choice="explicit")  # refused as such (the run derives its seeds)

CORPUS = {
    # first-order replies in an ArrayRecord
    "array: unknown name": (
        array_reply(BAD, {A: GLOBAL[A], "x.lora_B.weight": GLOBAL[B]}),
        "unknown tensor",
    ),
    "array: missing tensor": (array_reply(BAD, {A: moved(9)[A]}), "missing"),
    "array: transposed shape": (array_reply(BAD, {A: GLOBAL[A], B: GLOBAL[B].T}), "shape"),
    "array: float64": (array_reply(BAD, {k: v.double() for k, v in GLOBAL.items()}), "dtype"),
    "array: float16": (array_reply(BAD, {k: v.half() for k, v in GLOBAL.items()}), "dtype"),
    "array: int32": (array_reply(BAD, {k: v.int() for k, v in GLOBAL.items()}), "dtype"),
    "array: NaN": (array_reply(BAD, NAN_A), "non-finite"),
    "array: Inf": (array_reply(BAD, INF_B), "non-finite"),
    "array: norm 100x": (array_reply(BAD, moved(9, size=10.0)), "norm"),
    "array: zero examples": (array_reply(BAD, moved(9), examples=0.0), "num-examples"),
    # first-order replies as a fedft.v1.LoraUpdate
    "update: unknown name": (update_reply(BAD, proto(name="x.lora_A.weight")), "x.lora_A"),
    "update: wrong shape": (update_reply(BAD, proto(moved(9) | {B: GLOBAL[B][:8]})), "shape"),
    "update: NaN value": (update_reply(BAD, proto(data=b"\0\0\xc0\x7f" * 64)), "nan"),
    "update: Inf scale": (update_reply(BAD, proto(wire="int8", scales=INF_SCALES)), "scales"),
    "update: huge scale": (update_reply(BAD, proto(wire="int8", scales=HUGE_SCALES)), "overflow"),
    "update: -128 code": (update_reply(BAD, proto(wire="int8", data=b"\x80" * 64)), "code -128"),
    "update: truncated": (update_reply(BAD, encode_update(moved(9), "int8")[:-7]), "not a Lora"),
    "update: short data": (update_reply(BAD, proto(data=b"\0" * 255)), "data"),
    "update: version 2": (update_reply(BAD, proto(version=2)), "version"),
    "update: version 0": (update_reply(BAD, proto(version=0)), "version"),
    "update: unknown encoding": (update_reply(BAD, proto(encoding=7)), "encoding"),
    "update: norm 100x": (update_reply(BAD, encode_update(moved(9, 10.0), "int8")), "norm"),
    "update: not bytes": (update_reply(BAD, "AAAA"), "must be bytes"),
    # zeroth-order replies (their factors are rebuilt from the round's global state)
    "zo: explicit seeds in a derived run": (zo_reply(BAD, EXPLICIT), "seed_choice"),
    "zo: huge scale": (zo_reply(BAD, zo_edit(zo_payload(), scale=3e38)), "fixed scale"),
    "zo: scale 1e30": (zo_reply(BAD, zo_edit(zo_payload(), scale=1e30)), "fixed scale"),
    "zo: fp32 in an int8 run": (
        zo_reply(BAD, zo_payload(grad_encoding="fp32", grad_scale=None)),
        "grad_encoding",
    ),
    "zo: version 1": (zo_reply(BAD, zo_edit(zo_payload(), version=1)), "version"),
    "zo: version 3": (zo_reply(BAD, zo_edit(zo_payload(), version=3)), "version"),
    "zo: more steps than announced": (
        zo_reply(BAD, zo_payload(steps=ZO.local_steps + 1)),
        "num_steps",
    ),
    "zo: client outside the scenario": (
        zo_reply(BAD, zo_payload(client=NUM_CLIENTS)),
        f"outside the scenario's {NUM_CLIENTS} clients",
    ),
    "zo: another round": (zo_reply(BAD, zo_edit(zo_payload(), round=ROUND + 1)), "round"),
    "zo: truncated": (zo_reply(BAD, zo_payload()[:-2]), "not a ZoReply"),
}


def run_round(replies):
    seen = []
    strategy = FedIT(
        on_client=lambda r, u, b: seen.append(u.node_id),
        zo=ZO,
        run_seed=RUN_SEED,
        num_clients=NUM_CLIENTS,
        min_available_nodes=1,
    )
    strategy.configure_train(ROUND, factors_to_record(GLOBAL), ConfigRecord(), Grid(NODES))
    arrays, _ = strategy.aggregate_train(ROUND, replies)
    return record_to_factors(arrays), seen


def test_the_good_replies_are_all_accepted_and_move_the_state():
    out, seen = run_round(good_replies())
    assert sorted(seen) == [1, 2, 3, 4]
    assert not torch.equal(out[A], GLOBAL[A])


@pytest.mark.parametrize("case", list(CORPUS))
def test_a_bad_reply_is_dropped_named_and_changes_nothing(case, caplog):
    bad, needle = CORPUS[case]
    expected, _ = run_round(good_replies())
    good = good_replies()
    with caplog.at_level(logging.WARNING, logger="fedft.server"):
        out, seen = run_round([*good[:2], bad, *good[2:]])
    assert sorted(seen) == [1, 2, 3, 4]  # the bad reply never reached the recorder
    lines = [r.getMessage() for r in caplog.records if f"node {BAD}" in r.getMessage()]
    assert len(lines) == 1 and needle in lines[0], caplog.text
    assert not any(f"of node {n}:" in caplog.text for n in (1, 2, 3, 4))
    assert out.keys() == expected.keys()
    assert all(torch.equal(out[k], expected[k]) for k in expected)


def test_the_whole_corpus_at_once_leaves_only_the_good_aggregate(caplog):
    expected, _ = run_round(good_replies())
    bad = [reply for reply, _ in CORPUS.values()]
    with caplog.at_level(logging.WARNING, logger="fedft.server"):
        out, seen = run_round(good_replies() + bad)
    assert sorted(seen) == [1, 2, 3, 4]
    assert caplog.text.count(f"dropped reply of node {BAD}") == len(bad)
    assert all(torch.equal(out[k], expected[k]) for k in expected)


def test_norm_outliers_need_three_replies():
    two = [array_reply(1, moved(1)), array_reply(BAD, moved(9, size=10.0))]
    _, seen = run_round(two)
    assert sorted(seen) == [1, BAD]  # two replies: no majority to say which one is off


@pytest.mark.parametrize(
    ("norms", "expected"),
    [
        ([1.0, 1.1, 0.9, 100.0], [3]),
        ([1.0, 1.1, 0.9, 9.5], []),  # under 10x the others' median
        ([1.0, 1.1, 0.9, 1.0, 100.0, 300.0], [4, 5]),  # two outliers: the median does not move
        ([0.0, 0.0, 0.0], []),
        ([1.0, 1.0, float("nan")], [2]),
        ([1.0, float("inf"), 1.0, 1.0], [1]),
        ([1.0, 100.0], []),  # two: no majority
    ],
)
def test_norm_outliers(norms, expected):
    assert norm_outliers(norms) == expected


def test_a_mean_reference_would_miss_what_the_median_catches():
    norms = [1.0, 1.0, 1.0, 40.0, 40.0]
    assert norm_outliers(norms) == [3, 4]
    others_mean = (1.0 + 1.0 + 1.0 + 40.0) / 4  # 10.75: 40 is not above 10x that
    assert 10 * others_mean >= 40.0
    with pytest.raises(ValueError, match="factor"):
        norm_outliers(norms, factor=1.0)


def test_update_norm_is_the_frobenius_norm_of_the_change():
    state = moved(7)
    delta = torch.cat([(state[k].double() - GLOBAL[k].double()).reshape(-1) for k in GLOBAL])
    assert update_norm(state, GLOBAL) == pytest.approx(float(delta.norm()), rel=1e-12)


def test_two_nodes_replying_as_one_zo_client_are_both_kept_and_named(caplog):
    twin = zo_reply(BAD, zo_payload(client=3), examples=5)  # good_replies' zo client is 3 too
    with caplog.at_level(logging.WARNING, logger="fedft.server"):
        _, seen = run_round([*good_replies(), twin])
    assert sorted(seen) == [1, 2, 3, 4, BAD]  # valid SPSA steps, just along the same seeds
    assert f"nodes 4 and {BAD} both replied as zo client 3" in caplog.text
