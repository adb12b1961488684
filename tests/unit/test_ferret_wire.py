"""Ferret's messages on the wire: round trips, sizes, every rejection naming its field, fuzzing."""

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedft.errors import ReplyError
from fedft.ferret.aggregate import FerretCoordinates, FerretRound
from fedft.v1 import ferret_pb2
from fedft.wire.errors import WireError
from fedft.wire.ferret import (
    decode_ferret_history,
    decode_ferret_reply,
    encode_ferret_history,
    encode_ferret_reply,
)
from fedft.zo.seeds import seed_pool_id

K, BLOCKS, RUN_SEED = 64, 3, 7
PID = seed_pool_id(RUN_SEED, 2, K)
COUNTS = (64, 5, 2)


def coordinates(counts=COUNTS, seed=0):
    rng = np.random.default_rng(seed)
    return FerretCoordinates(
        counts,
        tuple((rng.standard_normal(n) * 10.0**b).astype(np.float32) for b, n in enumerate(counts)),
    )


def encode(coords=None, **overrides):
    args = {"pool_id": PID, "round": 2, "client": 4} | overrides
    return encode_ferret_reply(coordinates() if coords is None else coords, **args)


def decode(data, **overrides):
    args = {"num_blocks": BLOCKS, "pool_size": K} | overrides
    return decode_ferret_reply(data, **args)


def test_int8_round_trip_is_within_half_a_scale_per_block_and_one_byte_a_coordinate():
    sent = coordinates()
    data = encode(sent)
    reply = decode(data, pool_id=PID, round=2, num_clients=5, encoding="int8")
    assert (reply.pool_id, reply.round, reply.client, reply.encoding) == (PID, 2, 4, "int8")
    assert reply.coordinates.counts == COUNTS
    for got, want in zip(reply.coordinates.coords, sent.coords, strict=True):
        scale = float(np.abs(want).max()) / 127
        assert got.dtype == np.float32
        assert np.all(np.abs(got - want) <= scale * (0.5 + 1e-5))
    assert len(data) - sum(COUNTS) - 4 * BLOCKS <= 64  # header + counts, then 1 byte each
    bigger = encode(coordinates((64, 5, 12)))
    assert len(bigger) - len(data) == 10


def test_int4_round_trip_is_within_half_a_scale_per_block_and_half_a_byte_a_coordinate():
    sent = coordinates()
    data = encode(sent, encoding="int4")
    reply = decode(data, encoding="int4")
    assert reply.encoding == "int4" and reply.coordinates.counts == COUNTS
    for got, want in zip(reply.coordinates.coords, sent.coords, strict=True):
        scale = float(np.abs(want).max()) / 7
        assert got.dtype == np.float32
        assert np.all(np.abs(got - want) <= scale * (0.5 + 1e-5))
        assert np.abs(got).max() == pytest.approx(np.abs(want).max(), rel=1e-6)  # peak: code 7
    assert len(encode(sent)) - len(data) == sum(COUNTS) - (sum(COUNTS) + 1) // 2
    odd = coordinates((64, 5, 3))  # 72 codes: 36 bytes; 71 codes: 36 bytes, a zero pad nibble
    assert len(encode(odd, encoding="int4")) - len(data) == 0


def test_int4_codes_pack_low_nibble_first():
    sent = FerretCoordinates((3,), (np.float32([7.0, -7.0, 1.0]),))
    data = encode(sent, encoding="int4")
    message = ferret_pb2.FerretReply()
    message.ParseFromString(data)
    assert message.coords == bytes([0x97, 0x01]) and list(message.scales) == [1.0]
    assert decode(data, num_blocks=1).coordinates.coords[0].tolist() == [7.0, -7.0, 1.0]


def test_fp32_round_trip_is_exact():
    sent = coordinates()
    reply = decode(encode(sent, encoding="fp32"), encoding="fp32")
    assert all(
        np.array_equal(g, w) for g, w in zip(reply.coordinates.coords, sent.coords, strict=True)
    )


def test_a_zero_block_sends_scale_zero():
    sent = FerretCoordinates((2, 3), (np.zeros(2, np.float32), np.ones(3, np.float32)))
    reply = decode(encode(sent), num_blocks=2)
    assert reply.coordinates.coords[0].tolist() == [0.0, 0.0]


def message(**fields):
    base = ferret_pb2.FerretReply()
    base.ParseFromString(encode())
    for name, value in fields.items():
        if name in ("seed_counts", "scales"):
            getattr(base, name)[:] = value
        else:
            setattr(base, name, value)
    return base.SerializeToString()


FP32 = ferret_pb2.FERRET_COORD_ENCODING_FP32
INT4 = ferret_pb2.FERRET_COORD_ENCODING_INT4


@pytest.mark.parametrize(
    ("data", "field", "checks"),
    [
        (b"\xff\xff\xff", "message", {}),
        (message(version=0), "version", {}),
        (message(version=2), "version", {}),
        (message(pool_id=1), "pool_id", {"pool_id": PID}),
        (message(round=3), "round", {"round": 2}),
        (message(client=5), "client", {"num_clients": 5}),
        (message(num_blocks=4), "num_blocks", {}),
        (message(seed_counts=[64, 5]), "num_blocks", {}),
        (message(seed_counts=[65, 5, 2]), "seed_counts", {}),  # above K
        (message(seed_counts=[64, 5, 1]), "seed_counts", {}),  # below 2
        (message(seed_counts=[64, 5, 2**32 - 1]), "seed_counts", {}),
        (message(encoding=0), "encoding", {}),
        (message(encoding=9), "encoding", {}),
        (message(encoding=FP32), "scales", {}),  # int8 scales on an fp32 message
        (message(encoding=FP32, scales=[]), "coords", {}),  # int8 byte count
        (message(), "encoding", {"encoding": "fp32"}),
        (message(scales=[1.0, 1.0]), "scales", {}),
        (message(scales=[1.0, float("nan"), 1.0]), "scales", {}),
        (message(scales=[1.0, -1.0, 1.0]), "scales", {}),
        (message(scales=[3e38, 3e38, 3e38]), "coords", {}),  # 127 * 3e38 overflows float32
        (message(scales=[0.0, 1.0, 1.0]), "coords", {}),  # non-zero codes at scale 0
        (message(coords=b"\x01" * 70), "coords", {}),
        (message(coords=b"\x80" * 71), "coords", {}),  # -128 is outside the symmetric range
        (message(encoding=INT4), "coords", {}),  # 71 bytes for 71 int4 codes (36 bytes)
        (message(encoding=INT4, coords=b"\x08" + b"\x00" * 35), "coords", {}),  # code -8
        (message(encoding=INT4, coords=b"\x00" * 35 + b"\x10"), "coords", {}),  # pad nibble 1
        (message(), "coords", {"max_abs": 1.0}),
        (
            message(encoding=FP32, scales=[], coords=np.float32([np.inf] * 71).tobytes()),
            "coords",
            {},
        ),
    ],
)
def test_bad_replies_are_wire_errors_naming_the_field(data, field, checks):
    with pytest.raises(WireError) as error:
        decode(data, **checks)
    assert error.value.field == field and error.value.kind == "ferret reply"


def test_history_round_trips_and_checks_the_runs_bounds():
    history = [FerretRound(1, K, {0: 1.5, 70: -2.0}), FerretRound(3, K, {191: 0.25})]
    data = encode_ferret_history(history, RUN_SEED, BLOCKS)
    back = decode_ferret_history(data, run_seed=RUN_SEED, pool_size=K, num_blocks=BLOCKS)
    assert [(h.round, dict(h.aggregate)) for h in back] == [(h.round, h.aggregate) for h in history]
    checks = {"run_seed": RUN_SEED, "pool_size": K}
    with pytest.raises(WireError, match="num_blocks"):
        decode_ferret_history(data, num_blocks=2, **checks)
    with pytest.raises(WireError, match="beyond"):
        decode_ferret_history(data, num_blocks=BLOCKS, max_round=2, **checks)
    with pytest.raises(WireError, match="pool_size"):
        decode_ferret_history(data, run_seed=RUN_SEED, pool_size=32, num_blocks=BLOCKS)
    outside = encode_ferret_history([FerretRound(1, K, {BLOCKS * K: 1.0})], RUN_SEED, BLOCKS)
    with pytest.raises(WireError, match="slots"):
        decode_ferret_history(outside, num_blocks=BLOCKS, **checks)
    backwards = encode_ferret_history(history[::-1], RUN_SEED, BLOCKS)
    with pytest.raises(WireError, match="increasing"):
        decode_ferret_history(backwards, num_blocks=BLOCKS, **checks)
    bad = encode_ferret_history([FerretRound(1, K, {3: math.nan})], RUN_SEED, BLOCKS)
    with pytest.raises(WireError, match="non-finite"):
        decode_ferret_history(bad, num_blocks=BLOCKS, **checks)


# ---- fuzzing: any input either decodes to checked values or raises the typed error ------------

FUZZ = settings(
    max_examples=int(os.environ.get("FEDFT_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
VALID = {
    "reply": [encode(), encode(encoding="fp32"), encode(encoding="int4")],
    "history": [
        encode_ferret_history(
            [FerretRound(1, K, {0: 1.5, 70: -2.0}), FerretRound(3, K, {191: 0.25})],
            RUN_SEED,
            BLOCKS,
        )
    ],
}


def decode_any(kind, data):
    """Run one decoder; return its result, or None if it raised the typed error."""
    try:
        if kind == "reply":
            out = decode(data)
            c = out.coordinates
            assert len(c.counts) == BLOCKS and all(2 <= n <= K for n in c.counts)
            assert all(
                len(x) == n and np.all(np.isfinite(x))
                for x, n in zip(c.coords, c.counts, strict=True)
            )
            return out
        out = decode_ferret_history(data, run_seed=RUN_SEED, pool_size=K, num_blocks=BLOCKS)
        assert all(
            0 <= s < BLOCKS * K and math.isfinite(v) for h in out for s, v in h.aggregate.items()
        )
        return out
    except ReplyError as error:
        assert isinstance(error, WireError)
        return None


@pytest.mark.parametrize("kind", ["reply", "history"])
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


@pytest.mark.parametrize("kind", ["reply", "history"])
@FUZZ
@given(data=st.data())
def test_decoders_survive_mutated_valid_messages(kind, data):
    decode_any(kind, data.draw(mutated(kind)))


@st.composite
def ferret_replies(draw):
    counts = draw(st.lists(st.sampled_from([0, 1, 2, 3, K, K + 1, 2**32 - 1]), max_size=4))
    total = sum(n for n in counts if n < 100)
    return ferret_pb2.FerretReply(
        version=draw(st.sampled_from([0, 1, 1, 2])),
        pool_id=draw(st.sampled_from([PID, 0])),
        round=draw(st.sampled_from([0, 2, 2**32 - 1])),
        client=draw(st.sampled_from([0, 4, 2**32 - 1])),
        num_blocks=draw(st.sampled_from([len(counts), BLOCKS, 2**32 - 1])),
        encoding=draw(st.integers(0, 4)),
        seed_counts=counts,
        scales=draw(st.lists(st.floats(width=32), max_size=4)),
        coords=draw(
            st.one_of(
                st.binary(min_size=total, max_size=total),
                st.binary(min_size=(total + 1) // 2, max_size=(total + 1) // 2),
                st.lists(st.floats(width=32), min_size=total, max_size=total).map(
                    lambda v: np.float32(v).tobytes()
                ),
                st.binary(max_size=20),
            )
        ),
    ).SerializeToString()


@FUZZ
@given(data=ferret_replies())
def test_reply_decoder_survives_arbitrary_field_values(data):
    decode_any("reply", data)


@st.composite
def ferret_histories(draw):
    message = ferret_pb2.FerretHistory(
        version=draw(st.sampled_from([0, 1, 1])), num_blocks=draw(st.sampled_from([BLOCKS, 0]))
    )
    for _ in range(draw(st.integers(0, 3))):
        round_ = draw(st.integers(0, 5))
        pool_size = draw(st.sampled_from([0, 1, K, 2**32 - 1]))
        message.rounds.add(
            round=round_,
            pool_id=draw(st.sampled_from([seed_pool_id(RUN_SEED, round_, max(pool_size, 1)), 0])),
            pool_size=pool_size,
            slots=draw(st.binary(max_size=12)),
            values=draw(st.binary(max_size=12)),
        )
    return message.SerializeToString()


@FUZZ
@given(data=ferret_histories())
def test_history_decoder_survives_arbitrary_field_values(data):
    decode_any("history", data)


def test_the_fuzz_corpus_starts_from_messages_that_decode():
    for kind, messages in VALID.items():
        for data in messages:
            assert decode_any(kind, data) is not None, kind
