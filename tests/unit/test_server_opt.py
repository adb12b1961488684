"""Server optimisers (Flower's FedAvgM / FedAdam / FedYogi on fedft's aggregate) and FedProx's
client term, against their closed forms."""

import numpy as np
import pytest
import torch

from clients.runtimes.torch_lora import proximal_term
from fedft.config import load_scenario
from fedft.errors import ConfigError
from fedft.optim_config import ServerOptSection
from server.server_opt import ServerOptimizer

KEYS = ("m.lora_A.weight", "m.lora_B.weight")


def states(seed, n=3):
    gen = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(3, 2, generator=gen) for k in KEYS} for _ in range(n)]


def test_fedavgm_is_heavy_ball_on_the_pseudo_gradient():
    x0, agg1, agg2 = states(0)
    opt = ServerOptimizer(ServerOptSection("fedavgm", lr=0.5, momentum=0.8))
    x1 = opt.step(1, x0, agg1)
    opt.commit()
    x2 = opt.step(2, x1, agg2)
    for k in KEYS:
        v1 = x0[k] - agg1[k]
        torch.testing.assert_close(x1[k], x0[k] - 0.5 * v1)
        v2 = 0.8 * v1 + (x1[k] - agg2[k])
        torch.testing.assert_close(x2[k], x1[k] - 0.5 * v2)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_fedadam_and_fedyogi_follow_reddi_et_al(name):
    x0, agg1, agg2 = states(1)
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = ServerOptimizer(ServerOptSection(name, lr=eta, momentum=b1, beta_2=b2, tau=tau))
    x = x0
    m = {k: np.zeros((3, 2), np.float32) for k in KEYS}
    v = {k: np.zeros((3, 2), np.float32) for k in KEYS}
    for t, agg in ((1, agg1), (2, agg2)):
        new = opt.step(t, x, agg)
        opt.commit()
        for k in KEYS:
            d = agg[k].numpy() - x[k].numpy()
            m[k] = b1 * m[k] + (1 - b1) * d
            if name == "fedadam":
                v[k] = b2 * v[k] + (1 - b2) * d**2
                rate = eta * np.sqrt(1 - b2 ** (t + 1.0)) / (1 - b1 ** (t + 1.0))
            else:
                v[k] = v[k] - (1 - b2) * d**2 * np.sign(v[k] - d**2)
                rate = eta
            want = x[k].numpy() + rate * m[k] / (np.sqrt(v[k]) + tau)
            np.testing.assert_allclose(new[k].numpy(), want, rtol=1e-5, atol=1e-6)
        x = new


def test_a_step_not_committed_leaves_the_optimiser_as_it_was():
    x0, agg1, agg2 = states(2)
    kept = ServerOptimizer(ServerOptSection("fedadam", lr=0.1))
    kept.step(1, x0, agg1)  # its aggregate failed the final checks: not committed
    fresh = ServerOptimizer(ServerOptSection("fedadam", lr=0.1))
    a, b = kept.step(1, x0, agg2), fresh.step(1, x0, agg2)
    assert all(torch.equal(a[k], b[k]) for k in KEYS)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam"])
def test_the_optimiser_state_survives_a_checkpoint(name):
    x0, agg1, agg2 = states(3)
    opt = ServerOptimizer(ServerOptSection(name, lr=0.3))
    x1 = opt.step(1, x0, agg1)
    opt.commit()
    restored = ServerOptimizer(ServerOptSection(name, lr=0.3))
    restored.load_state(opt.state())
    a, b = opt.step(2, x1, agg2), restored.step(2, x1, agg2)
    assert all(torch.equal(a[k], b[k]) for k in KEYS)


def test_fedprox_adds_mu_times_the_drift_to_every_trainable_gradient():
    layer = torch.nn.Linear(4, 3, bias=False)
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    model = torch.nn.Module()
    model.layer, model.frozen = layer, frozen
    x = torch.randn(5, 4)
    with proximal_term(model, mu=0.5):
        start = layer.weight.detach().clone()
        with torch.no_grad():
            layer.weight += 0.1  # one local step's drift
        layer(x).sum().backward()
    plain = torch.ones(5, 3).T @ x  # d/dW of sum(x W^T)
    torch.testing.assert_close(layer.weight.grad, plain + 0.5 * (layer.weight.detach() - start))
    layer.weight.grad = None
    layer(x).sum().backward()  # the hook is gone after the round
    torch.testing.assert_close(layer.weight.grad, plain)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["federation.strategy='zo'", "server_opt.optimizer='fedadam'"], "server_opt.optimizer"),
        (["federation.strategy='flora'", "fedprox.mu=0.1"], "fedprox.mu"),
        (["server_opt.optimizer='sgd'"], "server_opt.optimizer"),
        (["fedprox.mu=-1"], "fedprox.mu"),
    ],
)
def test_what_the_optimisers_do_not_apply_to_is_refused(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_scenario(None, overrides)
