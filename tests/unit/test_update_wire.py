"""The LoraUpdate on the wire: round trips, sizes, every rejection, and fuzzed decoders.

The fuzz tests feed arbitrary bytes, mutated valid messages and structurally valid messages with
arbitrary field values to every fedft decoder (LoraUpdate, ZoReply, ZoHistory): the only exception
allowed out is the typed ``ReplyError`` (``WireError``) a server drops a reply for.
"""

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedft.errors import ReplyError
from fedft.v1 import update_pb2, zo_pb2
from fedft.wire.errors import WireError
from fedft.wire.errors import WireError as ZoWireError
from fedft.wire.update import MAX_NDIM, decode_update, dequantize_rows, encode_update, quantize_rows
from fedft.wire.zo_history import decode_history, encode_history
from fedft.wire.zo_reply import WIRE_VERSION, decode_zo_reply, encode_zo_reply
from fedft.zo.replay import RoundAggregate
from fedft.zo.seeds import ZoRecord, derived_seed_indices, seed_pool_id

FP32 = update_pb2.TENSOR_ENCODING_FP32
ROUNDING = 127 * 2**-24  # float32(code * scale) may round by this many scales
A, B = "base_model.model.q.lora_A.weight", "base_model.model.q.lora_B.weight"


def factors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {A: torch.randn(8, 64, generator=g), B: 0.01 * torch.randn(64, 8, generator=g)}


FACTORS = factors()


# ---- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(8, 64), (64, 8), (3,), (), (0, 5), (5, 0), (2, 3, 4), (1,) * MAX_NDIM]
)
def test_fp32_round_trip_is_exact(shape):
    tensor = torch.randn(shape, dtype=torch.float32) * 1e3
    out = decode_update(encode_update({"t": tensor}, "fp32"))
    assert list(out) == ["t"] and out["t"].dtype == torch.float32
    assert out["t"].shape == tensor.shape and torch.equal(out["t"], tensor)


def test_fp32_keeps_order_and_converts_other_float_dtypes():
    state = {B: FACTORS[B].double(), A: FACTORS[A].half()}
    out = decode_update(encode_update(state, "fp32"), template=FACTORS)
    assert list(out) == [B, A]  # the sender's order
    assert torch.equal(out[B], state[B].float()) and torch.equal(out[A], state[A].float())


@pytest.mark.parametrize("magnitude", [1e-30, 1e-3, 1.0, 1e30])
def test_int8_round_trip_is_within_half_a_row_scale(magnitude):
    state = {k: v * magnitude for k, v in FACTORS.items()}
    out = decode_update(encode_update(state, "int8"), template=state)
    for name, tensor in state.items():
        _, scales = quantize_rows(tensor)
        bound = scales[:, None] * (0.5 + ROUNDING)
        assert torch.all((out[name] - tensor).abs() <= bound), name
        assert scales.shape == (tensor.shape[0],)


def test_int8_size_is_one_byte_per_value_plus_four_per_row():
    values, rows = sum(t.numel() for t in FACTORS.values()), 8 + 64
    framing = sum(len(name) for name in FACTORS) + 16 * len(FACTORS) + 4  # tags, lengths, shape
    fp32_extra = len(encode_update(FACTORS, "fp32")) - 4 * values
    int8_extra = len(encode_update(FACTORS, "int8")) - (values + 4 * rows)
    assert 0 < fp32_extra <= framing and 0 < int8_extra <= framing


def test_quantize_rows_is_symmetric_per_row_with_max_at_127():
    x = torch.tensor([[2.54, -1.27, 0.0], [0.0, 0.0, 0.0], [-0.5, 0.25, 0.125]])
    codes, scales = quantize_rows(x)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32
    assert scales.tolist() == pytest.approx([0.02, 0.0, 0.5 / 127], rel=1e-7)
    assert codes[0].tolist() == [127, -64, 0]  # -63.5 rounds to even
    assert codes[1].tolist() == [0, 0, 0] and codes[2, 0] == -127
    assert torch.equal(dequantize_rows(codes, scales), codes.float() * scales[:, None])


def test_quantize_rows_flushes_rows_below_the_smallest_normal_to_zero():
    codes, scales = quantize_rows(torch.tensor([[1e-40, -1e-39], [1.0, 0.5]]))
    assert scales[0] == 0 and codes[0].tolist() == [0, 0] and scales[1] > 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=6), min_size=1, max_size=5
    ).filter(lambda rows: len({len(r) for r in rows}) == 1)
)
def test_int8_error_bound_holds_for_any_matrix(rows):
    x = torch.tensor(rows, dtype=torch.float32)
    codes, scales = quantize_rows(x)
    back = dequantize_rows(codes, scales)
    peak = x.abs().amax(dim=1)
    assert torch.all(scales <= peak / 127 * (1 + 1e-6))
    flushed = 127 * 2**-126  # a row whose max is below this is sent as zeros
    assert torch.all((back - x).abs() <= scales[:, None] * (0.5 + ROUNDING) + flushed)


# ---- rejections -------------------------------------------------------------------------------


def message(**fields):
    """A valid int8 update of FACTORS; ``fields`` override the first tensor's (or ``version``)."""
    base = update_pb2.LoraUpdate()
    base.ParseFromString(encode_update(FACTORS, "int8"))
    if "version" in fields:
        base.version = fields.pop("version")
    first = base.tensors[0]
    for name, value in fields.items():
        if name == "shape":
            del first.shape[:]
            first.shape.extend(value)
        else:
            setattr(first, name, value)
    return base.SerializeToString()


def fp32_message(values):
    entry = update_pb2.LoraTensor(
        name=A, shape=[2, 2], encoding=FP32, data=np.float32(values).tobytes()
    )
    return update_pb2.LoraUpdate(version=1, tensors=[entry]).SerializeToString()


def scales_bytes(first=1.0):
    return np.float32([first] + [0.01] * 7).tobytes()


@pytest.mark.parametrize(
    ("data", "field", "tensor"),
    [
        (b"\xff\xff\xff", "message", None),
        (message(version=0), "version", None),
        (message(version=2), "version", None),
        (update_pb2.LoraUpdate(version=1).SerializeToString(), "tensors", None),
        (message(name=""), "name", None),
        (message(name=B), "name", B),  # duplicate
        (message(shape=[1] * (MAX_NDIM + 1)), "shape", A),
        (message(shape=[0] + [2**32 - 1] * 3, data=b"", scales=b""), "shape", A),  # no element
        (message(encoding=0), "encoding", A),
        (message(encoding=9), "encoding", A),
        (message(shape=[8, 65]), "data", A),  # 512 codes for 520 values
        (message(data=b"\x01" * 511), "data", A),  # truncated data
        (message(data=b"\x01" * 511 + b"\x80"), "data", A),  # -128
        (message(scales=scales_bytes()[:-1]), "scales", A),
        (message(scales=scales_bytes() + b"\0\0\0\0"), "scales", A),
        (message(scales=scales_bytes(-1.0)), "scales", A),
        (message(scales=scales_bytes(float("nan"))), "scales", A),
        (message(scales=scales_bytes(float("inf"))), "scales", A),
        (message(scales=scales_bytes(0.0)), "data", A),  # non-zero codes in a row of scale 0
        (message(scales=scales_bytes(3e38)), "scales", A),  # 127 * 3e38 overflows float32
        (message(encoding=FP32), "scales", A),  # fp32 with scales
        (message(encoding=FP32, scales=b""), "data", A),  # 512 bytes for 512 float32
        (fp32_message([1.0, 2.0, float("nan"), 4.0]), "data", A),
        (fp32_message([1.0, float("-inf"), 3.0, 4.0]), "data", A),
        (fp32_message([1.0, 2.0, 3.0, 4.0])[:-1], "message", None),  # truncated bytes
    ],
)
def test_decoder_rejects_bad_messages_naming_field_and_tensor(data, field, tensor):
    with pytest.raises(WireError) as error:
        decode_update(data)
    assert error.value.field == field and error.value.tensor == tensor
    assert f"`{field}`" in str(error.value) and (tensor is None or repr(tensor) in str(error.value))
    assert isinstance(error.value, ZoWireError) and isinstance(error.value, ReplyError)


@pytest.mark.parametrize(
    ("template", "field", "tensor"),
    [
        ({**FACTORS, "extra.lora_A.weight": torch.zeros(1, 1)}, "tensors", "extra.lora_A.weight"),
        ({A: FACTORS[A]}, "name", B),  # B is not in the global state
        ({A: FACTORS[A], B: torch.zeros(64, 4)}, "shape", B),
        ({A: torch.zeros(64, 8), B: FACTORS[B]}, "shape", A),  # transposed
    ],
)
def test_decoder_checks_the_template(template, field, tensor):
    with pytest.raises(WireError) as error:
        decode_update(encode_update(FACTORS, "fp32"), template=template)
    assert (error.value.field, error.value.tensor) == (field, tensor)


@pytest.mark.parametrize("encoding", ["fp32", "int8"])
def test_every_truncation_is_rejected(encoding):
    small = {A: FACTORS[A][:2, :4], B: FACTORS[B][:4, :2]}
    data = encode_update(small, encoding)
    assert decode_update(data, template=small).keys() == small.keys()
    for cut in range(len(data)):  # a prefix may parse (fewer tensors) but never match the state
        with pytest.raises(WireError):
            decode_update(data[:cut], template=small)


@pytest.mark.parametrize(
    ("state", "encoding", "field"),
    [
        (FACTORS, "int4", "encoding"),
        ({}, "fp32", "tensors"),
        ({"": torch.zeros(2)}, "fp32", "name"),
        ({A: torch.zeros(2, 2, dtype=torch.int32)}, "fp32", "data"),
        ({A: torch.tensor([[1.0, float("nan")]])}, "int8", "data"),
        ({A: torch.tensor([[1.0, float("inf")]])}, "fp32", "data"),
        ({A: torch.zeros([1] * (MAX_NDIM + 1))}, "fp32", "shape"),
    ],
)
def test_encoder_rejects_what_the_decoder_would(state, encoding, field):
    with pytest.raises(WireError) as error:
        encode_update(state, encoding)
    assert error.value.field == field


# ---- fuzz: only typed errors escape ------------------------------------------------------------

FUZZ = settings(
    max_examples=int(os.environ.get("FEDFT_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
K, RUN_SEED, CLIENT = 256, 7, 12345
PID = seed_pool_id(RUN_SEED, 3, K)


def _valid_zo_reply(seed_choice):
    indices = derived_seed_indices(PID, 3, CLIENT, 6, K)
    records = [ZoRecord(i, 0.5 * t - 1) for t, i in enumerate(indices)]
    return encode_zo_reply(
        records, pool_id=PID, round=3, client=CLIENT, pool_size=K, seed_choice=seed_choice
    )


VALID = {
    "update": [encode_update(factors(1), "int8")]
    + [encode_update({A: FACTORS[A][:2, :3], B: FACTORS[B][:3, :2]}, e) for e in ("fp32", "int8")],
    "zo": [_valid_zo_reply("derived"), _valid_zo_reply("explicit")],
    "history": [
        encode_history(
            [RoundAggregate(1, K, {0: 1.5, 9: -2.0}), RoundAggregate(3, K, {15: 0.25})], RUN_SEED
        )
    ],
}


def decode_any(kind, data):
    """Run one decoder; return its result, or None if it raised the typed error."""
    try:
        if kind == "update":
            out = decode_update(data)
            assert all(t.dtype == torch.float32 and bool(t.isfinite().all()) for t in out.values())
            return out
        if kind == "zo":
            out = decode_zo_reply(data, pool_size=K, max_steps=50)
            assert all(0 <= r.seed_index < K and math.isfinite(r.grad) for r in out.records)
            return out
        out = decode_history(data, RUN_SEED, K, max_round=5)
        assert all(math.isfinite(v) for entry in out for v in entry.aggregate.values())
        return out
    except ReplyError:
        return None


@pytest.mark.parametrize("kind", ["update", "zo", "history"])
@FUZZ
@given(data=st.binary(max_size=200))
def test_decoders_survive_arbitrary_bytes(kind, data):
    decode_any(kind, data)


@st.composite
def mutated(draw, kind):
    """A valid message with a few bytes flipped, inserted, deleted, or cut off."""
    data = bytearray(draw(st.sampled_from(VALID[kind])))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("kind", ["update", "zo", "history"])
@FUZZ
@given(data=st.data())
def test_decoders_survive_mutated_valid_messages(kind, data):
    decode_any(kind, data.draw(mutated(kind)))


_F32_BYTES = st.lists(st.floats(width=32), max_size=12).map(lambda v: np.float32(v).tobytes())


@st.composite
def lora_updates(draw):
    """Well-formed protobuf with arbitrary field values: reaches the checks past parsing."""
    tensors = []
    for _ in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 2**32 - 1]), max_size=10))
        numel = math.prod(shape)
        exact = numel if numel < 64 else 0
        data = draw(
            st.one_of(
                st.binary(max_size=64),
                st.binary(min_size=exact, max_size=exact),  # int8 codes of the right length
                st.binary(min_size=4 * exact, max_size=4 * exact) if exact < 16 else st.just(b""),
            )
        )
        tensors.append(
            update_pb2.LoraTensor(
                name=draw(st.sampled_from(["", "a", "b", A])),
                shape=shape,
                encoding=draw(st.integers(0, 3)),
                data=data,
                scales=draw(st.one_of(_F32_BYTES, st.binary(max_size=16))),
            )
        )
    version = draw(st.sampled_from([0, 1, 1, 1, 2, 2**32 - 1]))
    return update_pb2.LoraUpdate(version=version, tensors=tensors).SerializeToString()


@FUZZ
@given(data=lora_updates())
def test_update_decoder_survives_arbitrary_field_values(data):
    decode_any("update", data)


@st.composite
def zo_replies(draw):
    steps = draw(st.integers(0, 60))
    return zo_pb2.ZoReply(
        version=draw(st.sampled_from([0, 1, 2, 2, 3])),
        pool_id=draw(st.sampled_from([PID, 0, 2**64 - 1])),
        round=draw(st.sampled_from([0, 3, 2**32 - 1])),
        client=draw(st.sampled_from([CLIENT, 0, 2**32 - 1])),
        num_steps=draw(st.sampled_from([steps, 2**32 - 1])),
        grad_encoding=draw(st.integers(0, 3)),
        seed_choice=draw(st.integers(0, 3)),
        scale=draw(st.floats(width=32)),
        seed_indices=draw(st.binary(max_size=2 * steps + 2)),
        grads=draw(st.one_of(st.binary(min_size=steps, max_size=steps), _F32_BYTES)),
    ).SerializeToString()


@FUZZ
@given(data=zo_replies())
def test_zo_reply_decoder_survives_arbitrary_field_values(data):
    decode_any("zo", data)


@st.composite
def zo_histories(draw):
    message = zo_pb2.ZoHistory(version=draw(st.sampled_from([0, 1, 1, 2])))
    for _ in range(draw(st.integers(0, 3))):
        round_ = draw(st.integers(0, 5))
        pool_size = draw(st.sampled_from([0, 1, 16, K, 2**32 - 1]))
        message.rounds.add(
            round=round_,
            pool_id=draw(st.sampled_from([seed_pool_id(RUN_SEED, round_, max(pool_size, 1)), 0])),
            pool_size=pool_size,
            seed_indices=draw(st.binary(max_size=12)),
            values=draw(st.one_of(_F32_BYTES, st.binary(max_size=12))),
        )
    return message.SerializeToString()


@FUZZ
@given(data=zo_histories())
def test_history_decoder_survives_arbitrary_field_values(data):
    decode_any("history", data)


def test_the_fuzz_corpus_starts_from_messages_that_decode():
    for kind, messages in VALID.items():
        for data in messages:
            assert decode_any(kind, data) is not None, kind


@pytest.mark.parametrize("pool_size", [0, 16, 2**32 - 1])
def test_history_with_another_pool_size_than_the_runs_is_a_wire_error(pool_size):
    # Found by the fuzz test above: seed_pool_id raised ZoError, not a ReplyError. And a 41-byte
    # history declaring 2**32 - 1 seeds made a replay build ~220 GiB of seeds: the run's pool
    # size bounds it before anything is derived.
    message = zo_pb2.ZoHistory(version=WIRE_VERSION)
    message.rounds.add(
        round=1, pool_id=0, pool_size=pool_size, seed_indices=b"\0" * 4, values=b"\0" * 4
    )
    with pytest.raises(ZoWireError) as error:
        decode_history(message.SerializeToString(), RUN_SEED, K)
    assert error.value.field == "rounds[1].pool_size"


def test_history_beyond_the_runs_rounds_is_a_wire_error():
    data = encode_history([RoundAggregate(7, K, {1: 0.5})], RUN_SEED)
    assert decode_history(data, RUN_SEED, K)[0].round == 7
    with pytest.raises(ZoWireError, match="beyond the run's 6 rounds"):
        decode_history(data, RUN_SEED, K, max_round=6)
