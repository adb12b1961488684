"""The numpy paths a device without torch takes give torch's bits: digests, codecs, records, replay.

The generator and the SPSA step are checked in ``test_rng.py`` and ``test_zo.py`` /
``test_zo_budget_options.py`` (numpy == torch, bit for bit); these are the rest of what an ONNX
Runtime device computes on numpy arrays where a torch device computes on tensors.
"""

import numpy as np
import pytest
import torch

from fedft.factors import factors_digest
from fedft.flower_records import factors_to_record, record_to_arrays, record_to_factors
from fedft.wire.update import decode_update, encode_update
from fedft.zo.replay import RoundAggregate, replay_history_, replay_records_
from fedft.zo.seeds import ZoRecord, seed_pool


def factor_state(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {
        "base_model.model.h.0.q.lora_A.weight": rng.normal(size=(4, 16)).astype(dtype),
        "base_model.model.h.0.q.lora_B.weight": rng.normal(size=(16, 4)).astype(dtype) * 1e-3,
        "base_model.model.h.1.q.lora_A.weight": rng.normal(size=(4, 16)).astype(dtype),
        "base_model.model.h.1.q.lora_B.weight": np.zeros((16, 4), dtype),
    }


def as_torch(arrays):
    return {name: torch.from_numpy(a.copy()) for name, a in arrays.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_factors_digest_of_numpy_arrays_is_the_torch_digest(dtype):
    arrays = factor_state(1, dtype)
    assert factors_digest(arrays) == factors_digest(as_torch(arrays))
    changed = {**arrays}
    name = next(iter(changed))
    changed[name] = changed[name].copy()
    changed[name].flat[3] = np.nextafter(changed[name].flat[3], np.inf)  # one ulp
    assert factors_digest(changed) != factors_digest(arrays)


@pytest.mark.parametrize("encoding", ["fp32", "int8"])
def test_encode_update_of_numpy_arrays_gives_the_torch_bytes(encoding):
    arrays = factor_state(2)
    data = encode_update(arrays, encoding)
    assert data == encode_update(as_torch(arrays), encoding)
    decoded = decode_update(data)
    assert list(decoded) == list(arrays)
    if encoding == "fp32":
        for name, array in arrays.items():
            assert decoded[name].numpy().tobytes() == array.tobytes()


def test_encode_update_refuses_bad_numpy_values_as_it_refuses_tensors():
    arrays = factor_state(3)
    name = next(iter(arrays))
    with pytest.raises(Exception, match="not floating"):
        encode_update({name: arrays[name].astype(np.int32)})
    arrays[name][0, 0] = np.nan
    with pytest.raises(Exception, match="non-finite"):
        encode_update(arrays)


def test_factors_to_record_of_numpy_arrays_is_the_torch_record():
    arrays = factor_state(4)
    from_numpy, from_torch = factors_to_record(arrays), factors_to_record(as_torch(arrays))
    assert list(from_numpy) == list(from_torch)
    for name in arrays:
        assert from_numpy[name].data == from_torch[name].data
        assert from_numpy[name].dtype == from_torch[name].dtype
    back = record_to_arrays(from_torch)
    tensors = record_to_factors(from_numpy)
    for name, array in arrays.items():
        assert back[name].tobytes() == array.tobytes() == tensors[name].numpy().tobytes()


def test_record_to_factors_turns_a_dtype_torch_cannot_hold_into_a_reply_error():
    record = factors_to_record({"w": np.arange(4, dtype=">f4")})  # big-endian
    assert record_to_arrays(record)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(Exception, match="'w' cannot be decoded"):
        record_to_factors(record)


@pytest.mark.parametrize("perturbations", [1, 2])
def test_replaying_records_on_numpy_arrays_gives_the_torch_bits(perturbations):
    arrays = list(factor_state(5).values())
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    pool = seed_pool(7, 1, 16)
    records = [ZoRecord(i % 16, g) for i, g in enumerate([0.5, -1.25, 3e-3, 2.0, -0.75, 0.1])]
    replay_records_(arrays, pool, records, lr=0.01, eps=1e-3, perturbations=perturbations)
    replay_records_(tensors, pool, records, lr=0.01, eps=1e-3, perturbations=perturbations)
    assert [a.tobytes() for a in arrays] == [t.numpy().tobytes() for t in tensors]
    assert arrays[0].tobytes() != factor_state(5)[next(iter(factor_state(5)))].tobytes()


def test_replaying_a_history_on_numpy_arrays_gives_the_torch_bits():
    arrays = list(factor_state(6).values())
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    history = [
        RoundAggregate(round=1, pool_size=8, aggregate={0: 0.25, 3: -1.5}),
        RoundAggregate(round=2, pool_size=8, aggregate={1: 2.0, 7: 0.125}),
    ]
    replay_history_(arrays, history, run_seed=3, lr=0.05)
    replay_history_(tensors, history, run_seed=3, lr=0.05)
    assert [a.tobytes() for a in arrays] == [t.numpy().tobytes() for t in tensors]
