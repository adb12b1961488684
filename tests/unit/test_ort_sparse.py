"""Sensitive sparse zo on ONNX Runtime: masked base weights as graph inputs, torch's deltas."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from fedft.config import load_scenario
from fedft.edge.bundle import FORWARD_MODEL, bundle_key
from fedft.edge.cache import ensure_bundle
from fedft.edge.errors import EdgeError
from fedft.edge.ort_sparse import SparseForward
from fedft.edge.ort_zo import ForwardModel, ort_spsa_steps
from fedft.models import load_peft_model
from fedft.wire.order import in_zo_order, zo_order
from fedft.zo.mask_build import build_mask, calibration_batches
from fedft.zo.replay import replay_records_
from fedft.zo.seeds import seed_pool
from fedft.zo.sparse import install_
from fedft.zo.step import spsa_multi_step_
from fedft.zo.trainable import initial_state, trainable_params

SPARSE = ["federation.strategy='zo'", "zo.sparse_fraction=0.01", "zo.sparse_calibration_batches=4"]
POOL = seed_pool(3, 0, 64)
EPS, LR = 1e-3, 0.01


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    sc = load_scenario("simulations/default.toml", SPARSE)
    bundle = ensure_bundle(sc, tmp_path_factory.mktemp("sparse-bundle"))
    model, tokenizer = load_peft_model.__wrapped__(sc.model, sc.lora, sc.run.seed)
    model.eval()
    mask = build_mask(sc, model, tokenizer)
    install_(model, mask)
    batches = calibration_batches(sc, tokenizer)
    numpy_batches = [{k: v.numpy() for k, v in b.items()} for b in batches]
    forward = ForwardModel(bundle.file(FORWARD_MODEL))
    sparse = SparseForward(forward, bundle.file(FORWARD_MODEL), mask, bundle.initial_factors())
    return sc, bundle, model, mask, batches, numpy_batches, forward, sparse


def test_a_sparse_bundle_takes_the_masked_weights_as_optional_inputs(setup, edge_bundle):
    sc, bundle, _, mask, _, _, forward, _ = setup
    assert bundle.key != edge_bundle.key == bundle_key(edge_bundle.manifest["config"])
    overridable = {i.name for i in forward.session.get_overridable_initializers()}
    assert {m + ".weight" for m in mask.modules} <= overridable
    assert all(n.endswith(".weight") and "lora_" not in n for n in overridable)
    assert forward.factor_names == sorted(bundle.initial_factors())  # LoRA stays required
    plain = ForwardModel(edge_bundle.file(FORWARD_MODEL))
    assert not plain.session.get_overridable_initializers()
    with pytest.raises(EdgeError, match="exported without zo.sparse_fraction"):
        SparseForward(plain, edge_bundle.file(FORWARD_MODEL), mask, edge_bundle.initial_factors())


def test_ort_losses_with_deltas_match_the_torch_hooks(setup):
    _, bundle, model, mask, batches, numpy_batches, forward, sparse = setup
    zeros = mask.initial_arrays()
    assert sparse.loss(zeros, numpy_batches[0]) == forward.loss(
        bundle.initial_factors(), numpy_batches[0]
    )
    rng = np.random.default_rng(0)
    deltas = {k: rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in zeros.items()}
    state = initial_state(model, ())
    params = trainable_params(model, zo_order(state), ())
    with torch.no_grad():
        for name, p in zip(zo_order(state), params, strict=True):
            p.copy_(torch.from_numpy(deltas[name]))
        try:
            for torch_batch, batch in zip(batches, numpy_batches, strict=True):
                expected = float(model(**torch_batch).loss)
                got = sparse.loss(deltas, batch)
                assert got == pytest.approx(expected, abs=1e-5)
                assert got != pytest.approx(sparse.loss(zeros, batch), abs=1e-3)  # deltas count
        finally:
            for p in params:
                p.zero_()


def test_ort_sparse_steps_match_torch_and_the_server_rebuilds_them_exactly(setup):
    _, _, model, mask, batches, numpy_batches, _, sparse = setup
    indices = [[5, 17], [2, 40], [63, 0], [9, 9 + 1]]  # two directions a step
    deltas = mask.initial_arrays()
    records, losses = ort_spsa_steps(sparse, deltas, numpy_batches, POOL, indices, eps=EPS, lr=LR)
    assert len(records) == 8 and len(losses) == 16

    state = initial_state(model, ())
    params = trainable_params(model, zo_order(state), ())
    expected = []
    try:
        for step, batch in zip(indices, batches, strict=True):

            def loss_fn(batch=batch):
                with torch.no_grad():
                    return float(model(**batch).loss)

            expected += spsa_multi_step_(params, loss_fn, [POOL[i] for i in step], EPS, LR)
        ulp = float(np.spacing(np.float32(max(losses))))
        got = [r.grad for r in records]
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=64 * ulp / (2 * EPS))
    finally:
        with torch.no_grad():
            for p in params:
                p.zero_()
    rebuilt = in_zo_order(mask.initial_arrays())
    replay_records_(rebuilt, POOL, records, lr=LR, eps=EPS, perturbations=2)
    assert [r.tobytes() for r in rebuilt] == [a.tobytes() for a in in_zo_order(deltas)]
    assert any(np.any(a != 0) for a in rebuilt)


def test_the_ort_sparse_path_imports_no_torch():
    code = (
        "import sys, fedft.edge.ort_sparse, fedft.zo.mask, clients.runtimes.ort_zo; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_ort_node_checks_the_mask_and_replies_deltas_the_server_rebuilds(setup, monkeypatch):
    from flwr.app import ConfigRecord, Context, RecordDict

    from clients import zo_sync
    from clients.runtimes import ort_lora
    from clients.runtimes.ort_zo import OrtZo
    from fedft.errors import ReplyError
    from fedft.flower_records import ZO_MASK_DIGEST_KEY, ZO_MASK_KEY
    from fedft.wire.zo_reply import decode_zo_reply

    sc, bundle, _, mask, _, _, _, _ = setup
    context = Context(1, 7, {"partition-id": 1}, RecordDict(), {})
    digest = {ZO_MASK_DIGEST_KEY: mask.digest()}
    assert (
        zo_sync.ort_mask(context, ConfigRecord({ZO_MASK_KEY: mask.encode(), **digest})) is not None
    )
    zo_sync._ORT_MASKS.clear()  # a new process: the node's state still holds the mask
    assert zo_sync.ort_mask(context, ConfigRecord(digest)).digest() == mask.digest()
    with pytest.raises(ReplyError, match="is not the run's"):
        zo_sync.ort_mask(context, ConfigRecord({ZO_MASK_DIGEST_KEY: "0" * 64}))
    with pytest.raises(ReplyError, match="never received"):
        zo_sync.ort_mask(Context(1, 8, {"partition-id": 2}, RecordDict(), {}), ConfigRecord(digest))
    zo_sync.ort_mask(context, ConfigRecord(digest))

    monkeypatch.setenv(ort_lora.BUNDLE_ENV, str(bundle.path))  # a device's bundle
    ort_lora.edge_bundle.cache_clear()
    try:
        start = mask.initial_arrays()
        reply = OrtZo().train_round(sc, 1, start, 1, node=3)
    finally:
        ort_lora.edge_bundle.cache_clear()
        zo_sync._ORT_MASKS.clear()
    steps = sc.zo.local_steps
    decoded = decode_zo_reply(reply.payload, sc.zo.pool_size, steps, round=1)
    assert len(decoded.records) == steps and not any(a.any() for a in start.values())
    rebuilt = in_zo_order(mask.initial_arrays())
    pool = seed_pool(sc.run.seed, 1, sc.zo.pool_size)
    replay_records_(rebuilt, pool, decoded.records, lr=sc.zo.lr, eps=sc.zo.eps)
    ends = in_zo_order(reply.factors)
    assert [r.tobytes() for r in rebuilt] == [e.tobytes() for e in ends]
    assert any(np.any(e != 0) for e in ends)


def test_the_masked_graph_follows_a_warm_device_clearing_its_caches(setup, monkeypatch):
    from flwr.app import ConfigRecord, Context, RecordDict

    from clients import warm, zo_sync
    from clients.runtimes import ort_lora, ort_zo
    from fedft.flower_records import ZO_MASK_DIGEST_KEY, ZO_MASK_KEY

    sc, bundle, _, mask, _, _, _, _ = setup
    context = Context(1, 7, {"partition-id": 1}, RecordDict(), {})
    config = {ZO_MASK_KEY: mask.encode(), ZO_MASK_DIGEST_KEY: mask.digest()}
    monkeypatch.setenv(ort_lora.BUNDLE_ENV, str(bundle.path))
    ort_lora.edge_bundle.cache_clear()
    try:
        zo_sync.ort_mask(context, ConfigRecord(config))
        first = ort_zo._sparse_forward(sc, 1)
        assert ort_zo._sparse_forward(sc, 1) is first  # the weights are copied once a run
        warm.clear()  # a warm device's bundle changed: its graph is loaded again
        again = ort_zo._sparse_forward(sc, 1)
        assert again is not first and again.model is ort_lora.forward_model(
            bundle.file("forward_model.onnx"), sc.simulation.threads_per_client
        )
    finally:
        ort_lora.edge_bundle.cache_clear()
        zo_sync._ORT_MASKS.clear()
        ort_zo._SPARSE.clear()
