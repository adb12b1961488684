"""Sensitive sparse zo (arXiv 2406.02913): the mask every party agrees on, and steps over it."""

import hashlib

import numpy as np
import pytest
import torch

from fedft.config import load_scenario
from fedft.errors import ConfigError
from fedft.models import load_peft_model
from fedft.wire.order import zo_order
from fedft.zo.config import ZoSection
from fedft.zo.mask_build import build_mask, calibration_batches
from fedft.zo.replay import replay_records_
from fedft.zo.rng import perturb_, rademacher_numpy
from fedft.zo.seeds import ZoError, ZoRecord, seed_pool
from fedft.zo.sparse import (
    DELTA_SUFFIX,
    SparseMask,
    install_,
    mask_from_scores,
    masked_modules,
    module_shapes,
    random_mask,
)
from fedft.zo.step import spsa_multi_step_, spsa_multi_step_numpy_
from fedft.zo.trainable import initial_state, set_trainable_, trainable_params, trainable_state

POOL = seed_pool(5, 0, 64)
SPARSE = ["federation.strategy='zo'", "zo.sparse_fraction=0.01", "zo.sparse_calibration_batches=2"]


def scenario(*overrides):
    return load_scenario("simulations/default.toml", [*SPARSE, *overrides])


def fresh_model(sc):
    """An uncached tiny model: hooks installed here never reach another test's model."""
    return load_peft_model.__wrapped__(sc.model, sc.lora, sc.run.seed)


def weights_digest(model):
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + tensor.detach().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny():
    sc = scenario()
    model, tokenizer = fresh_model(sc)
    return sc, model, tokenizer, build_mask(sc, model, tokenizer)


# ---- the mask ----------------------------------------------------------------------------------


def test_a_sensitive_mask_is_deterministic_and_picks_the_top_squared_gradients(tiny):
    sc, model, tokenizer, mask = tiny
    other, _ = fresh_model(sc)
    assert build_mask(sc, other, tokenizer).digest() == mask.digest()
    total = sum(r * c for r, c in module_shapes(model, sc.zo.sparse_modules).values())
    assert mask.numel == round(0.01 * total) and mask.total <= total
    assert set(mask.modules) <= set(masked_modules(model, sc.zo.sparse_modules))
    # not a random draw: the mask is uneven across modules (some hold far more than their share)
    shares = [idx.size / (r * c) for (r, c), idx in zip(mask.shapes, mask.indices, strict=True)]
    assert max(shares) > 5 * 0.01
    # another calibration (more batches) moves some entries, never the count
    more = build_mask(scenario("zo.sparse_calibration_batches=3"), other, tokenizer)
    assert more.numel == mask.numel and more.digest() != mask.digest()


def test_mask_from_scores_keeps_the_top_m_and_breaks_ties_by_index():
    scores = {"b": torch.tensor([[3.0, 1.0], [1.0, 0.0]]), "a": torch.tensor([[1.0, 5.0]])}
    mask = mask_from_scores(scores, fraction=0.5)  # m = 3 of 6: 5, 3, then the first 1 (a[0,0])
    assert mask.modules == ("a", "b")
    assert [idx.tolist() for idx in mask.indices] == [[0, 1], [0]]
    # a module the top m misses is left out (no empty tensor in the state)
    scores["c"] = torch.zeros(3, 3)
    assert mask_from_scores(scores, fraction=3 / 15).modules == ("a", "b")


def test_a_random_mask_derives_from_the_seed_alone():
    shapes = {"x": (30, 20), "y": (10, 10)}
    a, b, c = (
        random_mask(shapes, 0.05, 1),
        random_mask(shapes, 0.05, 1),
        random_mask(shapes, 0.05, 2),
    )
    assert a.digest() == b.digest() != c.digest()
    assert a.numel == 35 and all(i.size and np.all(np.diff(i) > 0) for i in a.indices)


def test_the_mask_round_trips_on_the_wire_and_refuses_a_malformed_one(tiny):
    _, _, _, mask = tiny
    wire = mask.encode()
    assert len(wire) < 4 * mask.numel + 100 * len(mask.modules)  # 4 bytes an index
    back = SparseMask.decode(wire)
    assert back.digest() == mask.digest() and back.modules == mask.modules
    for bad in [b"", b"XXXX" + wire[4:], wire[:-3], wire + b"\0"]:
        with pytest.raises(ZoError, match="sparse mask"):
            SparseMask.decode(bad)
    with pytest.raises(ZoError, match="sorted"):
        SparseMask(("m",), ((2, 2),), (np.array([2, 1], np.int64),))
    with pytest.raises(ZoError, match="non-empty"):
        SparseMask(("m",), ((2, 2),), (np.array([], np.int64),))


# ---- the generator covers exactly the mask -------------------------------------------------------


def test_the_generator_covers_exactly_the_mask_in_zo_order(tiny):
    sc, _, tokenizer, mask = tiny
    model, _ = fresh_model(sc)
    before = weights_digest(model)
    install_(model, mask)
    state = initial_state(model, ())
    names = zo_order(state)
    assert names == sorted(m + DELTA_SUFFIX for m in mask.modules)
    assert sum(t.numel() for t in state.values()) == mask.numel
    params = trainable_params(model, names, ())
    perturb_(params, POOL[3], 0.25)
    z = rademacher_numpy(POOL[3], 0, mask.numel).astype(np.float32) * np.float32(0.25)
    assert np.array_equal(torch.cat([p.view(-1) for p in params]).numpy(), z)
    assert weights_digest(model) == before  # no weight of the model moved: only the deltas
    # the deltas act as W + P_S(delta): the same loss as writing them into the weights
    batch = calibration_batches(sc, tokenizer)[0]
    model.eval()
    with torch.no_grad():
        hooked = float(model(**batch).loss)
        for h in model.__dict__["fedft_sparse"].handles:
            h.remove()
        modules = masked_modules(model, sc.zo.sparse_modules)
        for name, idx in zip(mask.modules, mask.indices, strict=True):
            w = modules[name].weight.view(-1)
            w[torch.from_numpy(idx)] += params[names.index(name + DELTA_SUFFIX)]
        assert float(model(**batch).loss) == pytest.approx(hooked, abs=1e-6)


def test_installing_is_idempotent_and_refuses_another_mask_or_model(tiny):
    sc, _, _, mask = tiny
    model, _ = fresh_model(sc)
    first = install_(model, mask)
    assert install_(model, SparseMask.decode(mask.encode())) is first
    other = random_mask(module_shapes(model, sc.zo.sparse_modules), 0.01, 9)
    with pytest.raises(ZoError, match="holds mask"):
        install_(model, other)
    wrong = SparseMask(("nowhere",), ((3, 3),), (np.array([0], np.int64),))
    with pytest.raises(ZoError, match="no 3 x 3 linear module 'nowhere'"):
        install_(fresh_model(sc)[0], wrong)
    state = {k: torch.full_like(v, 0.5) for k, v in first.deltas.items()}
    set_trainable_(model, state, ())
    assert all(torch.equal(trainable_state(model, ())[k], v) for k, v in state.items())


def test_a_sparse_step_is_torch_numpy_identical_and_replays_exactly(tiny):
    sc, _, tokenizer, mask = tiny
    model, _ = fresh_model(sc)
    model.eval()
    install_(model, mask)
    names = zo_order(initial_state(model, ()))
    params = trainable_params(model, names, ())
    arrays = [np.zeros(p.shape, np.float32) for p in params]
    batch = calibration_batches(sc, tokenizer)[0]
    losses: list[float] = []

    def torch_loss():
        with torch.no_grad():
            losses.append(float(model(**batch).loss))
        return losses[-1]

    records = []
    for step in range(3):
        indices = [(5 * step + j) % 64 for j in range(2)]
        seeds = [POOL[i] for i in indices]
        start = len(losses)
        g_t = spsa_multi_step_(params, torch_loss, seeds, 1e-3, 0.05, grad_scale=0.02)
        replayed = iter(losses[start:])  # numpy is handed the losses its forward pass would see
        g_n = spsa_multi_step_numpy_(arrays, replayed.__next__, seeds, 1e-3, 0.05, grad_scale=0.02)
        assert g_t == g_n
        records += [ZoRecord(i, g) for i, g in zip(indices, g_t, strict=True)]
    assert [a.tobytes() for a in arrays] == [p.numpy().tobytes() for p in params]
    assert any(np.any(a != 0) for a in arrays)
    rebuilt = [torch.zeros_like(p) for p in params]
    replay_records_(rebuilt, POOL, records, lr=0.05, eps=1e-3, perturbations=2)
    assert [r.numpy().tobytes() for r in rebuilt] == [p.numpy().tobytes() for p in params]


# ---- the edge ----------------------------------------------------------------------------------


def test_the_sparse_options_are_checked_at_the_edge():
    for kwargs, key in [
        ({"sparse_fraction": -0.1}, "zo.sparse_fraction"),
        ({"sparse_fraction": 0.5}, "zo.sparse_fraction"),
        ({"sparse_fraction": float("nan")}, "zo.sparse_fraction"),
        ({"sparse_modules": ()}, "zo.sparse_modules"),
        ({"sparse_calibration_batches": 0}, "zo.sparse_calibration_batches"),
        ({"sparse_fraction": 0.01, "trainable_modules": ("lm_head",)}, "zo.sparse_fraction"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            ZoSection(**kwargs)
    with pytest.raises(ConfigError, match=r"zo\.sparse_mask"):
        load_scenario(None, ["zo.sparse_mask='largest'"])
    with pytest.raises(ConfigError, match=r"zo\.sparse_fraction.*strategy = 'zo'"):
        load_scenario(None, ["zo.sparse_fraction=0.01"])  # a fedit run
    mixed = ["federation.strategy='lora_fair'", "client_groups=[{partitions=[0], backend='zo'}]"]
    with pytest.raises(ConfigError, match=r"zo\.sparse_fraction.*no mixed rounds"):
        load_scenario(None, [*SPARSE, *mixed])
    assert load_scenario(None, [*SPARSE, "client.backend='ort'"]).zo.sparse  # test_ort_sparse.py
    assert scenario("client.quantization='nf4'").zo.sparse  # a quantized base is the point
    assert not ZoSection().sparse


def test_a_sparse_module_the_model_lacks_is_a_config_error():
    sc = scenario("zo.sparse_modules=['q_proj', 'qkv']")
    model, tokenizer = fresh_model(sc)
    with pytest.raises(ConfigError, match=r"zo\.sparse_modules.*'qkv'"):
        build_mask(sc, model, tokenizer)
