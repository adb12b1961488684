import numpy as np
import pytest
import torch

from fedft.algorithms.fedavg import normalized_weights, weighted_average


def test_weighted_average_matches_numpy():
    rng = np.random.default_rng(0)
    states = [
        {"m.lora_A.weight": rng.normal(size=(4, 6)), "m.lora_B.weight": rng.normal(size=(5, 4))}
        for _ in range(3)
    ]
    weights = [10, 30, 60]
    got = weighted_average(
        [{k: torch.tensor(v, dtype=torch.float32) for k, v in s.items()} for s in states], weights
    )
    for name in states[0]:
        expected = np.average(np.stack([s[name] for s in states]), axis=0, weights=weights)
        np.testing.assert_allclose(got[name].numpy(), expected, rtol=1e-6, atol=1e-6)
        assert got[name].dtype == torch.float32


def test_single_client_is_identity():
    a = torch.randn(3, 3)
    assert torch.equal(weighted_average([{"x": a}], [7])["x"], a)


@pytest.mark.parametrize("weights", [[], [0, 0], [1, -1], [1, float("nan")], [1, float("inf")]])
def test_bad_weights(weights):
    with pytest.raises(ValueError):
        normalized_weights(weights)
