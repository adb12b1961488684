"""The zo reply on the wire: round trips, size, and every rejection naming its field."""

import numpy as np
import pytest

from fedft.v1 import zo_pb2
from fedft.wire.errors import WireError
from fedft.wire.zo_reply import decode_zo_reply, encode_zo_reply
from fedft.zo.seeds import ZoRecord, derived_seed_indices, seed_pool_id

K = 4096
PID = seed_pool_id(7, 0, K)
CLIENT = 2**32 - 5  # the client's index in the scenario (uint32 on the wire)


def derived_records(steps, grads=None, pool_size=K, round=3):
    indices = derived_seed_indices(PID, round, CLIENT, steps, pool_size)
    grads = np.linspace(-2.0, 3.0, steps).tolist() if grads is None else grads
    return [ZoRecord(i, g) for i, g in zip(indices, grads, strict=True)]


def encode(records, **overrides):
    args = {"pool_id": PID, "round": 3, "client": CLIENT, "pool_size": K} | overrides
    return encode_zo_reply(records, **args)


def test_int8_derived_round_trip_costs_one_byte_per_step():
    records = derived_records(50)
    data = encode(records)
    reply = decode_zo_reply(data, pool_size=K, max_steps=50, pool_id=PID, round=3)
    assert (reply.pool_id, reply.round, reply.client) == (PID, 3, CLIENT)
    assert (reply.grad_encoding, reply.seed_choice) == ("int8", "derived")
    assert [r.seed_index for r in reply.records] == [r.seed_index for r in records]
    assert reply.scale == pytest.approx(3.0 / 127, rel=1e-6)
    for got, sent in zip(reply.records, records, strict=True):
        assert abs(got.grad - sent.grad) <= reply.scale / 2 * (1 + 1e-5)
    assert len(data) - 50 <= 64  # header
    assert len(encode(derived_records(120))) - len(data) == 70  # exactly 1 byte per extra step


def test_header_stays_under_64_bytes_with_every_field_at_its_largest():
    records = derived_records(1000, round=2**32 - 1)
    data = encode(records, round=2**32 - 1)
    assert len(data) - 1000 <= 64


@pytest.mark.parametrize(("pool_size", "width"), [(200, 1), (K, 2), (70_000, 4)])
def test_explicit_seed_indices_round_trip_with_the_pool_sized_width(pool_size, width):
    records = [ZoRecord(pool_size - 1 - 3 * t, 0.5 * t) for t in range(10)]
    data = encode(records, pool_size=pool_size, seed_choice="explicit")
    reply = decode_zo_reply(data, pool_size=pool_size, max_steps=10)
    assert [r.seed_index for r in reply.records] == [r.seed_index for r in records]
    assert reply.seed_choice == "explicit"
    two_steps = encode(records[:2], pool_size=pool_size, seed_choice="explicit")
    assert len(data) - len(two_steps) == 8 * (1 + width)  # index + code per step


def test_fp32_round_trip_is_exact():
    grads = np.float32([0.1, -3.75e-7, 12345.678]).astype(float).tolist()
    reply = decode_zo_reply(encode(derived_records(3, grads), grad_encoding="fp32"), K, 3)
    assert [r.grad for r in reply.records] == grads and reply.scale == 0.0


def test_fixed_scale_round_trip_is_exact_on_dequantized_values():
    scale = float(np.float32(0.01))
    grads = [float(np.float32(c * scale)) for c in (-127, -3, 0, 5, 127)]
    reply = decode_zo_reply(encode(derived_records(5, grads), grad_scale=scale), K, 5)
    assert [r.grad for r in reply.records] == grads and reply.scale == scale


def test_all_zero_grads_send_scale_zero():
    reply = decode_zo_reply(encode(derived_records(4, [0.0] * 4)), K, 4)
    assert reply.scale == 0.0 and [r.grad for r in reply.records] == [0.0] * 4


def message(**fields):
    """A well-formed int8 derived message of 3 steps, with some fields overridden."""
    base = zo_pb2.ZoReply()
    base.ParseFromString(encode(derived_records(3)))
    for name, value in fields.items():
        setattr(base, name, value)
    return base.SerializeToString()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"\xff\xff\xff", "message"),
        (message(version=1), "version"),  # version 1 derived seeds from Flower's node id
        (message(version=3), "version"),
        (message(version=0), "version"),
        (message(num_steps=4), "grads"),  # announced 4 steps, 3 codes
        (message(grads=b"\x01\x02"), "grads"),
        (message(grads=b"\x01\x80\x02"), "grads"),  # -128 is outside the symmetric range
        (message(scale=float("nan")), "scale"),
        (message(scale=float("inf")), "scale"),
        (message(scale=-1.0), "scale"),
        (message(scale=3e38, grads=b"\x01\x7f\x02"), "scale"),  # finite, but 127 * scale is inf
        (message(scale=0.0), "grads"),  # non-zero codes with a zero scale
        (message(grad_encoding=0), "grad_encoding"),
        (message(grad_encoding=7), "grad_encoding"),
        (message(seed_choice=0), "seed_choice"),
        (message(seed_indices=b"\x00\x00" * 3), "seed_indices"),  # derived: must be empty
        (
            message(seed_choice=zo_pb2.ZO_SEED_CHOICE_EXPLICIT, seed_indices=b"\x00\x00"),
            "seed_indices",
        ),
        (
            message(seed_choice=zo_pb2.ZO_SEED_CHOICE_EXPLICIT, seed_indices=b"\x00\x10" * 3),
            "seed_indices",  # 0x1000 = 4096 is outside a pool of 4096
        ),
        (message(grad_encoding=zo_pb2.ZO_GRAD_ENCODING_FP32), "scale"),
        (message(grad_encoding=zo_pb2.ZO_GRAD_ENCODING_FP32, scale=0.0), "grads"),  # 3 bytes
        (
            message(
                grad_encoding=zo_pb2.ZO_GRAD_ENCODING_FP32,
                scale=0.0,
                grads=np.float32([1.0, np.nan, 2.0]).tobytes(),
            ),
            "grads",
        ),
    ],
)
def test_decoder_rejects_bad_messages_naming_the_field(data, field):
    with pytest.raises(WireError) as error:
        decode_zo_reply(data, pool_size=K, max_steps=10)
    assert error.value.field == field and f"`{field}`" in str(error.value)


def test_decoder_rejects_truncated_messages():
    data = encode(derived_records(20))
    for cut in range(1, len(data)):
        with pytest.raises(WireError):
            decode_zo_reply(data[:cut], pool_size=K, max_steps=20)


def test_decoder_rejects_more_steps_than_announced_and_the_wrong_round_or_pool():
    data = encode(derived_records(5))
    with pytest.raises(WireError, match="num_steps"):
        decode_zo_reply(data, pool_size=K, max_steps=4)
    with pytest.raises(WireError, match="round"):
        decode_zo_reply(data, pool_size=K, max_steps=5, round=4)
    with pytest.raises(WireError, match="pool_id"):
        decode_zo_reply(data, pool_size=K, max_steps=5, pool_id=PID + 1)


def test_encoder_rejects_inconsistent_records():
    records = derived_records(3)
    wrong = [ZoRecord((records[0].seed_index + 1) % K, 1.0), *records[1:]]
    with pytest.raises(WireError, match="step 0"):
        encode(wrong)
    with pytest.raises(WireError, match="seed_indices"):
        encode([ZoRecord(K, 1.0)], seed_choice="explicit")
    with pytest.raises(WireError, match="grad_encoding"):
        encode(records, grad_encoding="int4")
    with pytest.raises(WireError, match="client"):
        encode(records, client=-1)
    with pytest.raises(WireError, match="client"):
        encode(records, client=2**32)
    with pytest.raises(WireError, match="grad_scale"):
        encode(records, grad_encoding="fp32", grad_scale=0.01)


def test_sizes_are_checked_before_any_seed_index_is_derived(monkeypatch):
    # Before: num_steps seed indices were derived before the decoder saw that the message held
    # no scalars for them.
    message = zo_pb2.ZoReply()
    message.ParseFromString(encode(derived_records(50)))
    message.grads = b""
    import fedft.wire.zo_reply as wire

    def derive(*args):
        raise AssertionError("derived seed indices for a message with no scalars")

    monkeypatch.setattr(wire, "derived_seed_indices", derive)
    with pytest.raises(WireError, match="grads"):
        decode_zo_reply(message.SerializeToString(), pool_size=K, max_steps=50)


@pytest.mark.parametrize(
    ("expect", "field"),
    [
        ({"grad_encoding": "fp32"}, "grad_encoding"),
        ({"seed_choice": "explicit"}, "seed_choice"),
        ({"grad_scale": 1.0}, "scale"),
        ({"grad_clip": 2.5}, "grads"),  # the records' g reach 3.0
    ],
)
def test_the_runs_encoding_seed_choice_scale_and_clip_are_enforced(expect, field):
    data = encode(derived_records(5), grad_scale=3.0 / 127)
    decode_zo_reply(data, pool_size=K, max_steps=5, grad_scale=3.0 / 127, grad_clip=3.0)
    with pytest.raises(WireError) as error:
        decode_zo_reply(data, pool_size=K, max_steps=5, **expect)
    assert error.value.field == field
