"""Per-client LoRA ranks on the server: what each node is sent, which reply shapes are accepted
(hostile ones of the wrong rank are dropped), and what FedIT (zero-padding), LoRA-FAIR, FlexLoRA
and FFA-LoRA make of the accepted ones."""

import logging

import pytest
import torch
from flwr.app import ConfigRecord

from fedft.algorithms.hetero_lora import pad_state, truncate_state
from fedft.algorithms.lora_fair import LoraFairConfig
from fedft.config import RobustSection
from fedft.flower_records import MERGED_KEY, factors_to_record, record_to_factors
from fedft.wire.update import encode_update
from server.strategies.fedit import FedIT
from server.strategies.ffa_lora import FfaLora
from server.strategies.flexlora import FlexLora
from server.strategies.flora import Flora
from server.strategies.lora_fair import LoraFair
from tests.unit.replies import GLOBAL, ROUND, RUN_SEED, Grid, array_reply, moved, update_reply

F64 = torch.float64
RANKS = {1: 2}  # partition 1 trains rank 2; the server (GLOBAL) has rank 4
PARTITION_OF = {10: 0, 11: 1, 12: 2}  # node -> partition


def strategy(cls=FedIT, **kwargs):
    out = cls(
        run_seed=RUN_SEED,
        num_clients=3,
        robust=RobustSection(),
        min_available_nodes=1,
        min_train_nodes=1,
        client_ranks=RANKS,
        **kwargs,
    )
    out.sampler.partition_of = dict(PARTITION_OF)  # as configure_query would learn it
    return out


def configure(s, nodes=(10, 11, 12)):
    return s.configure_train(ROUND, factors_to_record(GLOBAL), ConfigRecord(), Grid(nodes))


def aggregate(s, replies):
    arrays, metrics = s.aggregate_train(ROUND, replies)
    return (None if arrays is None else record_to_factors(arrays)), metrics


SMALL = truncate_state(GLOBAL, 2)


def honest():
    return [
        array_reply(10, moved(1), examples=30),
        array_reply(11, moved(2, state=SMALL), examples=20),
        update_reply(12, encode_update(moved(3), "fp32"), examples=10),
    ]


def test_each_node_is_sent_the_leading_components_at_its_rank():
    sent = {m.metadata.dst_node_id: m for m in configure(strategy())}
    small = record_to_factors(sent[11].content.array_records["arrays"])
    for name, tensor in small.items():
        assert torch.equal(tensor, SMALL[name])
    big = record_to_factors(sent[10].content.array_records["arrays"])
    assert all(torch.equal(big[n], GLOBAL[n]) for n in GLOBAL)


def test_a_node_whose_partition_is_unknown_is_sent_nothing(caplog):
    s = strategy()
    s.sampler.partition_of.pop(12)
    with caplog.at_level(logging.WARNING, "fedft.server"):
        sent = configure(s, nodes=(10, 11, 12))
    assert sorted(m.metadata.dst_node_id for m in sent) == [10, 11]
    assert "node 12 has not said its partition" in caplog.text


def test_fedit_with_two_ranks_is_the_zero_padded_average():
    s = strategy()
    configure(s)
    out, _ = aggregate(s, honest())
    replies = [moved(1), pad_state(moved(2, state=SMALL), 4), moved(3)]
    for name in GLOBAL:
        want = (30 * replies[0][name] + 20 * replies[1][name] + 10 * replies[2][name]) / 60
        torch.testing.assert_close(out[name], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("node", "factors", "why"),
    [
        (11, moved(2), "has shape (4, 16), expected (2, 16)"),  # the server's rank, not its own
        (10, moved(1, state=SMALL), "has shape (2, 16), expected (4, 16)"),  # below its rank
        (11, truncate_state(GLOBAL, 1), "has shape (1, 16), expected (2, 16)"),
    ],
)
def test_a_reply_of_another_rank_than_its_node_was_assigned_is_dropped(node, factors, why, caplog):
    s = strategy()
    configure(s)
    replies = [r for r in honest() if r.metadata.src_node_id != node]
    clean, _ = aggregate(s, list(replies))
    s = strategy()
    configure(s)
    with caplog.at_level(logging.WARNING, "fedft.server"):
        out, _ = aggregate(s, [*replies, array_reply(node, factors, examples=1000)])
    assert f"dropped reply of node {node}" in caplog.text and why in caplog.text
    assert all(torch.equal(out[n], clean[n]) for n in GLOBAL)


def test_an_encoded_update_of_the_wrong_rank_is_dropped(caplog):
    s = strategy()
    configure(s)
    with caplog.at_level(logging.WARNING, "fedft.server"):
        out, _ = aggregate(s, [update_reply(11, encode_update(moved(2), "int8"))])
    assert out is None and "dropped reply of node 11" in caplog.text


def test_a_small_rank_node_is_judged_by_its_own_change_not_the_components_it_lacks(caplog):
    s = strategy(cls=FedIT)
    configure(s)
    near = [  # every node changes its start by ~1e-3: none is an outlier
        array_reply(10, moved(1, size=1e-3), examples=30),
        array_reply(11, moved(2, size=1e-3, state=SMALL), examples=20),
        array_reply(12, moved(3, size=1e-3), examples=10),
    ]
    with caplog.at_level(logging.WARNING, "fedft.server"):
        out, _ = aggregate(s, near)
    assert "dropped" not in caplog.text
    assert out is not None


def test_lora_fair_with_two_ranks_corrects_the_padded_average():
    s = strategy(cls=LoraFair, solver=LoraFairConfig(steps=50))
    configure(s)
    out, metrics = aggregate(s, honest())
    assert metrics["lora_fair.cos_after"] >= metrics["lora_fair.cos_before"]
    assert all(out[n].shape == GLOBAL[n].shape for n in GLOBAL)


def test_flexlora_with_two_ranks_is_the_truncated_svd_of_the_exact_update():
    s = strategy(cls=FlexLora)
    configure(s)
    out, metrics = aggregate(s, honest())
    replies = [moved(1), moved(2, state=SMALL), moved(3)]
    p = [0.5, 1 / 3, 1 / 6]
    for module in ("l0.q", "l1.v"):
        a, b = (f"base_model.model.{module}.lora_{f}.weight" for f in "AB")
        dense = sum(pk * r[b].to(F64) @ r[a].to(F64) for pk, r in zip(p, replies, strict=True))
        u, sv, vh = torch.linalg.svd(dense, full_matrices=False)
        best = u[:, :4] @ torch.diag(sv[:4]) @ vh[:4]
        got = out[b].to(F64) @ out[a].to(F64)
        torch.testing.assert_close(got, best, rtol=1e-4, atol=1e-4)
    assert 0 < metrics["flexlora.kept_energy"] < 1


def test_ffa_lora_refuses_a_moved_a_and_keeps_the_global_a(caplog):
    s = strategy(cls=FfaLora)
    configure(s)
    frozen = {n: (SMALL[n] if "lora_A" in n else moved(2, state=SMALL)[n]) for n in SMALL}
    big = {n: (GLOBAL[n] if "lora_A" in n else moved(1)[n]) for n in GLOBAL}
    with caplog.at_level(logging.WARNING, "fedft.server"):
        out, _ = aggregate(
            s,
            [
                array_reply(10, big, examples=30),
                array_reply(11, frozen, examples=10),
                array_reply(12, moved(3), examples=10),  # moved its A: refused
            ],
        )
    assert "dropped reply of node 12" in caplog.text and "lora_A frozen" in caplog.text
    for name in GLOBAL:
        if "lora_A" in name:
            assert torch.equal(out[name], GLOBAL[name])
        else:
            want = 0.75 * big[name] + 0.25 * pad_state(frozen, 4)[name]
            torch.testing.assert_close(out[name], want, rtol=1e-6, atol=1e-6)


def test_flora_merges_the_exact_stack_and_restarts_from_the_fresh_lora():
    fresh = {n: (GLOBAL[n] if "lora_A" in n else torch.zeros_like(GLOBAL[n])) for n in GLOBAL}
    s = strategy(cls=Flora, fresh=fresh)
    sent = {m.metadata.dst_node_id: m for m in configure(s)}
    assert len(sent[10].content.array_records[MERGED_KEY]) == 0  # nothing merged yet
    out, metrics = aggregate(s, honest())
    assert all(torch.equal(out[n], fresh[n]) for n in GLOBAL)
    replies = [moved(1), moved(2, state=SMALL), moved(3)]
    p = [0.5, 1 / 3, 1 / 6]
    for module in ("l0.q", "l1.v"):
        a, b = (f"base_model.model.{module}.lora_{f}.weight" for f in "AB")
        dense = sum(pk * r[b].to(F64) @ r[a].to(F64) for pk, r in zip(p, replies, strict=True))
        torch.testing.assert_close(s.merged[b] @ s.merged[a], dense, rtol=1e-6, atol=1e-6)
    assert metrics["flora.merged_rank"] == 10  # 4 + 2 + 4 stacked, all independent
    sent = {m.metadata.dst_node_id: m for m in configure(s)}  # the next round sends the merge
    merged = record_to_factors(sent[11].content.array_records[MERGED_KEY])
    assert all(torch.equal(merged[n], s.merged[n]) for n in s.merged)
    restored = strategy(cls=Flora, fresh=fresh)
    restored.load_state(s.state())
    assert all(torch.equal(restored.merged[n], s.merged[n]) for n in s.merged)
