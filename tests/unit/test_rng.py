"""The portable perturbation generator: spec, numpy == torch, test vectors, perturbation passes."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedft.zo.rng import (
    PerturbationError,
    hash_words_numpy,
    layout_of,
    layout_offsets,
    perturb_,
    perturb_numpy_,
    perturbation_numpy,
    rademacher_numpy,
    rademacher_torch,
)

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "rng_vectors.json").read_text())
M32 = 0xFFFFFFFF


def spec_mix32(x):
    x ^= x >> 16
    x = (x * 0x045D9F3B) & M32
    x ^= x >> 16
    x = (x * 0x045D9F3B) & M32
    return x ^ (x >> 16)


def spec_sign(seed, i):
    """z_i written straight from the comment in protos/fedft/v1/zo.proto, one element at a time."""
    k1 = spec_mix32((seed & M32) ^ 0x9E3779B9)
    k2 = spec_mix32((seed >> 32) ^ k1 ^ 0x85EBCA6B)
    w = i >> 5
    inner = (w & M32) ^ k1 ^ spec_mix32((w >> 32) ^ 0xC2B2AE35)
    word = spec_mix32(((inner * 0x045D9F3B) & M32) ^ k2)
    return -1 if (word >> (i & 31)) & 1 else 1


CASES = [
    (0, 0, 1),
    (0, 0, 300),
    (1, 31, 2),
    (2**64 - 1, 7, 1000),
    (0x0123456789ABCDEF, 2**20 - 37, 100),  # across a default chunk boundary
    (5, 2**32 + 5, 500),  # element index > 2**32
    (6, 2**37 - 40, 100),  # across the 2**37 boundary: w1 goes 0 -> 1
    (7, 5 * 2**37 + 3, 64),
    (8, 2**62 - 33, 33),
]


@pytest.mark.parametrize(("seed", "start", "count"), CASES)
def test_numpy_and_torch_match_the_written_spec(seed, start, count):
    expected = [spec_sign(seed, i) for i in range(start, start + count)]
    assert rademacher_numpy(seed, start, count).tolist() == expected
    assert rademacher_torch(seed, start, count).tolist() == expected


def test_numpy_equals_torch_on_many_random_ranges():
    gen = np.random.default_rng(0)
    for _ in range(40):
        seed = int(gen.integers(0, 2**63)) * 2 + int(gen.integers(0, 2))
        start = int(gen.integers(0, 2**40)) if gen.random() < 0.5 else int(gen.integers(0, 4096))
        count = int(gen.integers(0, 5000))
        got = rademacher_torch(seed, start, count).numpy()
        np.testing.assert_array_equal(got, rademacher_numpy(seed, start, count))


def test_numpy_equals_torch_over_several_chunks():
    start, count = 2**20 * 3 - 1000, 2**21 + 2000  # crosses three chunk boundaries, unaligned
    got = rademacher_torch(11, start, count).numpy()
    np.testing.assert_array_equal(got, rademacher_numpy(11, start, count))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_numpy():
    got = rademacher_torch(9, 2**33 + 1, 100_000, device="cuda").cpu().numpy()
    np.testing.assert_array_equal(got, rademacher_numpy(9, 2**33 + 1, 100_000))


@pytest.mark.parametrize("case", VECTORS["signs"], ids=lambda c: f"{c['seed']}@{c['start']}")
def test_committed_sign_vectors(case):
    seed, start, count = int(case["seed"], 16), int(case["start"], 16), case["count"]
    expected = [1 if c == "+" else -1 for c in case["signs"]]
    assert rademacher_numpy(seed, start, count).tolist() == expected
    assert rademacher_torch(seed, start, count).tolist() == expected


@pytest.mark.parametrize("case", VECTORS["words"], ids=lambda c: f"{c['seed']}:{c['word_index']}")
def test_committed_word_vectors(case):
    seed, word = int(case["seed"], 16), int(case["word_index"], 16)
    assert int(hash_words_numpy(seed, word, 1)[0]) == int(case["word"], 16)
    signs = rademacher_numpy(seed, 32 * word, 32)
    bits = [(int(case["word"], 16) >> b) & 1 for b in range(32)]
    assert signs.tolist() == [-1 if bit else 1 for bit in bits]


def test_signs_are_exactly_plus_minus_one_and_balanced():
    n = 1 << 20
    z = rademacher_torch(2024, 12345, n)
    assert set(z.unique().tolist()) == {-1, 1}
    assert abs(z.double().mean().item()) < 5 / n**0.5  # 5 standard deviations
    bits = (hash_words_numpy(2024, 0, n // 32)[:, None] >> np.arange(32)) & 1
    assert np.abs(bits.mean(axis=0) - 0.5).max() < 5 * 0.5 / (n // 32) ** 0.5  # every bit position


def test_perturbations_of_different_seeds_are_nearly_orthogonal():
    n, seeds = 20_000, [0, 1, 2, 2**32, 2**32 + 1, 2**63, 12345]
    z = np.stack([rademacher_numpy(s, 0, n) for s in seeds]).astype(np.float64)
    corr = z @ z.T / n
    off_diagonal = corr[~np.eye(len(seeds), dtype=bool)]
    assert np.abs(off_diagonal).max() < 5 / n**0.5


def make_tensors(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3,), (33, 7), (1,), (2, 3, 50), (700,)]
    return [torch.randn(s, generator=gen).to(dtype) for s in shapes]


def numpy_reference(tensors, seed, scale):
    """w + float32(scale) * z computed in numpy float32 with z from the slow per-layout path."""
    layout = layout_of((str(i), t) for i, t in enumerate(tensors))
    z = perturbation_numpy(seed, layout)
    s = np.float32(scale)
    return [t.numpy() + s * z[str(i)].astype(np.float32) for i, t in enumerate(tensors)]


@pytest.mark.parametrize("chunk", [32, 100, 1 << 20])
def test_perturb_is_bit_identical_to_a_numpy_float32_reference(chunk):
    tensors = make_tensors()
    expected = numpy_reference(tensors, seed=77, scale=1e-3)
    perturb_(tensors, seed=77, scale=1e-3, chunk=chunk)
    for got, want in zip(tensors, expected, strict=True):
        assert got.numpy().tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_perturb_numpy_is_bit_identical_to_perturb(dtype):
    tensors = make_tensors(dtype)
    arrays = [t.numpy().copy() for t in tensors]
    perturb_(tensors, seed=5, scale=-0.37)
    perturb_numpy_(arrays, seed=5, scale=-0.37, chunk=64)
    for t, a in zip(tensors, arrays, strict=True):
        assert t.numpy().tobytes() == a.tobytes()


def test_perturb_bfloat16_rounds_once_from_float32():
    tensors = make_tensors(torch.bfloat16)
    layout = layout_of((str(i), t) for i, t in enumerate(tensors))
    z = perturbation_numpy(3, layout)
    expected = [
        (t.float() + np.float32(0.01) * torch.from_numpy(z[str(i)]).float()).bfloat16()
        for i, t in enumerate(tensors)
    ]
    perturb_(tensors, seed=3, scale=0.01)
    for got, want in zip(tensors, expected, strict=True):
        assert torch.equal(got, want)


def test_perturb_layout_with_mixed_dtypes_and_empty_tensors():
    gen = torch.Generator().manual_seed(1)
    dtypes = [torch.float64, torch.float32, torch.float16, torch.float32, torch.bfloat16]
    shapes = [(5,), (0,), (40, 3), (3, 0, 2), (77,)]
    tensors = [torch.randn(s, generator=gen).to(d) for s, d in zip(shapes, dtypes, strict=True)]
    z = perturbation_numpy(21, layout_of((str(i), t) for i, t in enumerate(tensors)))
    s = np.float32(0.125)
    expected = [  # computed in float32 (float64 for float64), rounded once to the dtype
        (t.double() + float(s) * torch.from_numpy(z[str(i)]).double()).to(t.dtype)
        if t.dtype == torch.float64
        else (t.float() + s * torch.from_numpy(z[str(i)]).float()).to(t.dtype)
        for i, t in enumerate(tensors)
    ]
    perturb_(tensors, seed=21, scale=0.125, chunk=64)
    for got, want in zip(tensors, expected, strict=True):
        assert torch.equal(got, want)


def test_layout_offsets_concatenate_in_order():
    layout = layout_of([("a", torch.zeros(2, 3)), ("b", torch.zeros(5)), ("c", torch.zeros(1, 1))])
    assert layout == [("a", (2, 3)), ("b", (5,)), ("c", (1, 1))]
    assert layout_offsets(layout) == [0, 6, 11, 12]
    z = perturbation_numpy(9, layout)
    np.testing.assert_array_equal(z["b"], rademacher_numpy(9, 6, 5))


def test_perturb_rejects_bad_tensors_and_arguments():
    with pytest.raises(PerturbationError, match="tensor 1"):
        perturb_([torch.zeros(3), torch.zeros(3, 4).t()], seed=0, scale=1.0)
    with pytest.raises(PerturbationError, match="tensor 0"):
        perturb_([torch.zeros(3, dtype=torch.int64)], seed=0, scale=1.0)
    with pytest.raises(PerturbationError, match="scale"):
        perturb_([torch.zeros(3)], seed=0, scale=float("nan"))
    with pytest.raises(PerturbationError, match="scale"):
        perturb_([torch.zeros(3)], seed=0, scale=1e39)  # overflows float32
    for seed in (-1, 2**64, True, 1.5):
        with pytest.raises(PerturbationError, match="seed"):
            perturb_([torch.zeros(3)], seed=seed, scale=1.0)
    with pytest.raises(PerturbationError, match="start"):
        rademacher_numpy(0, -1, 3)
    with pytest.raises(PerturbationError, match="count"):
        rademacher_torch(0, 2**62, 1)


def test_word_bytes_come_low_byte_first_on_either_byte_order():
    from fedft.zo.rng import _low_bytes_first

    words = torch.tensor([0x04030201, -0x10000000 | 0x0D0C0B], dtype=torch.int32)
    little = words.view(torch.uint8)  # this machine's memory
    big = little.view(-1, 4).flip(1).reshape(-1)  # the same words in a big-endian machine's memory
    expected = [0x01, 0x02, 0x03, 0x04, 0x0B, 0x0C, 0x0D, 0xF0]
    if sys.byteorder == "little":
        assert _low_bytes_first(little, "little").tolist() == expected
    assert _low_bytes_first(big, "big").tolist() == expected
