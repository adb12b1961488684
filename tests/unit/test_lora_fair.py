"""LoRA-FAIR: the factor-space solve against a dense reference that builds dW explicitly."""

import math

import pytest
import torch

from fedft.algorithms.lora_fair import (
    LoraFairConfig,
    LoraFairError,
    correct_module,
    factor_products,
)
from fedft.algorithms.lora_fair_state import lora_fair_aggregate
from fedft.errors import ConfigError

F64 = torch.float64


def dense_reference(a_list, b_list, weights, lam=0.01, steps=500, lr=0.01, tol=1e-7):
    """The obvious slow solve: dense dW (d x k), autograd cosine, gradient descent on all of dB.

    Same loop as the library: evaluate, keep the best iterate, stop on steps or tol, step.
    Returns (dB*, cos_before, cos_after, objective, steps_run).
    """
    p = torch.tensor(weights, dtype=F64) / sum(weights)
    a_bar = sum(p_k * a.to(F64) for p_k, a in zip(p, a_list, strict=True))
    b_bar = sum(p_k * b.to(F64) for p_k, b in zip(p, b_list, strict=True))
    ideal = sum(p_k * b.to(F64) @ a.to(F64) for p_k, a, b in zip(p, a_list, b_list, strict=True))
    delta = torch.zeros_like(b_bar, requires_grad=True)
    best, previous, step = (None, None, math.inf), math.inf, 0
    cos_before = None
    while True:
        update = (b_bar + delta) @ a_bar  # (d, k)
        cos = (ideal * update).sum() / (ideal.norm() * update.norm())
        (grad,) = torch.autograd.grad(1 - cos, delta)
        cos, delta_ = cos.detach(), delta.detach()
        norm = float(delta_.norm())
        if norm > 0:
            grad = grad + lam * delta_ / norm
        elif float(grad.norm()) > 0:
            grad = grad * max(0.0, 1 - lam / float(grad.norm()))
        objective = 1 - float(cos) + lam * norm
        cos_before = float(cos) if cos_before is None else cos_before
        if objective < best[2]:
            best = (delta_.clone(), float(cos), objective)
        if step == steps or (tol > 0 and abs(previous - objective) <= tol):
            break
        previous, step = objective, step + 1
        with torch.no_grad():
            delta -= lr * grad
    return best[0], cos_before, best[1], best[2], step


def random_clients(d, k, r, n, seed, spread=1.0, b_scale=0.05):
    """Client factors around a shared pair, `spread` controlling their heterogeneity.

    B is small, as after local training from B = 0: the cosine's gradient grows as 1 / ||B||, and
    when it is below lam at dB = 0 the exact answer is dB* = 0, which would test nothing.
    """
    gen = torch.Generator().manual_seed(seed)
    a0, b0 = torch.randn(r, k, generator=gen), torch.randn(d, r, generator=gen)
    a_list = [a0 + spread * torch.randn(r, k, generator=gen) for _ in range(n)]
    b_list = [b_scale * (b0 + spread * torch.randn(d, r, generator=gen)) for _ in range(n)]
    weights = (torch.rand(n, generator=gen) * 100 + 1).tolist()
    return a_list, b_list, weights


def rel_err(x, y):
    return float((x.to(F64) - y.to(F64)).norm() / y.to(F64).norm())


CASES = [  # d, k, r, n, spread, seed
    (12, 20, 3, 2, 1.0, 0),
    (20, 7, 4, 5, 0.5, 1),
    (16, 16, 1, 3, 1.0, 2),
    (9, 30, 8, 4, 0.3, 3),
    (24, 11, 2, 10, 2.0, 4),
    (5, 9, 4, 3, 1.0, 5),  # d < 2r: the span of [B_bar, M] is all of R^d
]


@pytest.mark.parametrize(("d", "k", "r", "n", "spread", "seed"), CASES)
def test_factor_solve_matches_dense_reference(d, k, r, n, spread, seed):
    a_list, b_list, weights = random_clients(d, k, r, n, seed, spread)
    config = LoraFairConfig(steps=300, tol=0.0)
    fix = correct_module(a_list, b_list, weights, config)
    delta, cos_before, cos_after, objective, steps = dense_reference(
        a_list, b_list, weights, steps=300, tol=0.0
    )
    assert fix.steps_run == steps == 300
    assert rel_err(fix.delta_b, delta) <= 1e-5
    assert fix.objective == pytest.approx(objective, rel=1e-9)
    assert fix.cos_before == pytest.approx(cos_before, rel=1e-9)
    assert fix.cos_after == pytest.approx(cos_after, rel=1e-9)
    assert fix.cos_after > fix.cos_before + 1e-4  # heterogeneous clients: a real improvement
    assert fix.objective < 1 - fix.cos_before
    p = torch.tensor(weights, dtype=F64) / sum(weights)
    b_bar = sum(p_k * b.to(F64) for p_k, b in zip(p, b_list, strict=True))
    assert rel_err(fix.b_corrected, b_bar + delta) <= 1e-6
    assert fix.b_corrected.dtype == fix.a_bar.dtype == torch.float32
    assert fix.b_corrected.shape == (d, r) and fix.a_bar.shape == (r, k)


def test_default_config_with_early_stop_matches_dense_reference():
    a_list, b_list, weights = random_clients(10, 14, 3, 4, seed=7)
    fix = correct_module(a_list, b_list, weights)
    delta, _, _, objective, steps = dense_reference(a_list, b_list, weights)
    assert fix.steps_run == steps and fix.status in ("converged", "max_steps")
    assert rel_err(fix.delta_b, delta) <= 1e-5
    assert fix.objective == pytest.approx(objective, rel=1e-9)


def test_loose_tolerance_stops_early():
    a_list, b_list, weights = random_clients(10, 14, 3, 4, seed=8)
    fix = correct_module(a_list, b_list, weights, LoraFairConfig(tol=1e-3))
    assert fix.status == "converged" and 0 < fix.steps_run < 500


@pytest.mark.parametrize("seed", range(6))
def test_correction_never_lowers_the_cosine(seed):
    a_list, b_list, weights = random_clients(8, 12, 2, 3, seed, spread=0.2 * seed)
    fix = correct_module(a_list, b_list, weights, LoraFairConfig(steps=100))
    assert fix.cos_after >= fix.cos_before
    assert fix.objective <= 1 - fix.cos_before


# ||dW||^2 from the Grams (n r (d + k) <= d k: the last two) or from dW (the rest: many clients)
CASES = [
    (12, 20, 3, 3),
    (20, 7, 5, 2),
    (6, 6, 6, 1),
    (8, 10, 2, 300),
    (40, 50, 2, 3),
    (64, 64, 4, 8),
]


@pytest.mark.parametrize(("d", "k", "r", "n"), CASES)
def test_closed_form_terms_equal_dense_ones(d, k, r, n):
    a_list, b_list, weights = random_clients(d, k, r, n, seed=d + k)
    prod = factor_products(a_list, b_list, weights)
    p = torch.tensor(weights, dtype=F64) / sum(weights)
    a_bar = sum(p_k * a.to(F64) for p_k, a in zip(p, a_list, strict=True))
    b_bar = sum(p_k * b.to(F64) for p_k, b in zip(p, b_list, strict=True))
    ideal = sum(p_k * b.to(F64) @ a.to(F64) for p_k, a, b in zip(p, a_list, b_list, strict=True))
    delta = torch.randn(d, r, dtype=F64)
    update = (b_bar + delta) @ a_bar
    inner, update_sq = prod.terms(delta)
    assert inner == pytest.approx(float((ideal * update).sum()), rel=1e-12)
    assert update_sq == pytest.approx(float(update.norm() ** 2), rel=1e-12)
    assert prod.ideal_sq == pytest.approx(float(ideal.norm() ** 2), rel=1e-12)
    assert torch.allclose(prod.a_bar, a_bar, rtol=1e-14) and torch.allclose(prod.b_bar, b_bar)


def test_one_client_is_already_exact():
    a_list, b_list, _ = random_clients(10, 6, 3, 1, seed=9)
    fix = correct_module(a_list, b_list, [5.0])
    assert fix.cos_before == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(fix.delta_b, torch.zeros(10, 3))
    assert torch.equal(fix.b_corrected, b_list[0]) and torch.equal(fix.a_bar, a_list[0])
    assert not fix.diverged


def test_shared_a_needs_no_correction():
    """With one A for every client (FFA-LoRA), B_bar A = dW exactly."""
    a_list, b_list, weights = random_clients(10, 6, 3, 4, seed=10)
    fix = correct_module([a_list[0]] * 4, b_list, weights, LoraFairConfig(tol=0.0))
    assert fix.cos_before == pytest.approx(1.0, abs=1e-12)
    assert float(fix.delta_b.norm()) == 0.0


def test_large_lambda_keeps_zero_correction_without_nan():
    """At dB = 0 the regulariser's subgradient absorbs a gradient smaller than lam."""
    a_list, b_list, weights = random_clients(8, 8, 2, 3, seed=11)
    fix = correct_module(a_list, b_list, weights, LoraFairConfig(lam=100.0, tol=0.0, steps=20))
    assert torch.equal(fix.delta_b, torch.zeros(8, 2))
    assert fix.cos_after == fix.cos_before and math.isfinite(fix.objective)


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda a, b: ([a[0], a[1]], [torch.zeros_like(b[0])] * 2), "zero_ideal_update"),
        (lambda a, b: ([torch.zeros_like(a[0])] * 2, [b[0], b[1]]), "zero_ideal_update"),
        (lambda a, b: ([a[0], -a[0]], [b[0], b[0]]), "zero_ideal_update"),
        (lambda a, b: ([a[0], -a[0]], [b[0], b[1]]), "zero_a_bar"),
        (lambda a, b: ([a[0], a[1]], [b[0], -b[0]]), "zero_average_update"),
    ],
)
def test_degenerate_inputs_return_plain_averages(make, status):
    a_raw, b_raw, _ = random_clients(7, 9, 2, 2, seed=12)
    a_list, b_list = make(a_raw, b_raw)
    fix = correct_module(a_list, b_list, [1.0, 1.0])
    assert fix.status == status and fix.steps_run == 0 and not fix.diverged
    assert torch.equal(fix.delta_b, torch.zeros(7, 2))
    assert torch.equal(fix.b_corrected, ((b_list[0].double() + b_list[1].double()) / 2).float())
    assert torch.equal(fix.a_bar, ((a_list[0].double() + a_list[1].double()) / 2).float())
    assert all(math.isfinite(x) for x in (fix.cos_before, fix.cos_after, fix.objective))


def test_huge_learning_rate_falls_back_to_plain_averages():
    a_list, b_list, weights = random_clients(8, 10, 3, 3, seed=13)
    fix = correct_module(a_list, b_list, weights, LoraFairConfig(lr=1e300))
    assert fix.diverged and fix.status == "diverged"
    plain = correct_module(a_list, b_list, weights, LoraFairConfig(steps=0))
    assert torch.equal(fix.b_corrected, plain.b_corrected)
    assert torch.equal(fix.delta_b, torch.zeros(8, 3)) and fix.cos_after == fix.cos_before


@pytest.mark.parametrize("lr", [1e-6, 1.0, 1e6, 1e30, 1e150, 1e200, 1e305])
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_outputs_are_always_finite(lr, scale):
    a_list, b_list, weights = random_clients(6, 5, 2, 3, seed=14)
    b_list = [b * scale for b in b_list]
    fix = correct_module(a_list, b_list, weights, LoraFairConfig(lr=lr, steps=30))
    assert torch.isfinite(fix.b_corrected).all() and torch.isfinite(fix.a_bar).all()
    assert math.isfinite(fix.cos_after) and math.isfinite(fix.objective)
    assert fix.cos_after >= fix.cos_before


def test_weights_are_normalised():
    a_list, b_list, _ = random_clients(6, 5, 2, 2, seed=15)
    config = LoraFairConfig(steps=50)
    one = correct_module(a_list, b_list, [2.0, 6.0], config)
    two = correct_module(a_list, b_list, [0.25, 0.75], config)
    assert torch.allclose(one.b_corrected, two.b_corrected, rtol=1e-6, atol=0)


def peft_state(a_list, b_list, extra):
    layers = {}
    for i, (a, b) in enumerate(zip(a_list, b_list, strict=True)):
        prefix = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        layers[f"{prefix}.lora_A.weight"] = a
        layers[f"{prefix}.lora_B.weight"] = b
    return {**layers, **extra}


def test_aggregate_corrects_every_module_and_averages_the_rest():
    clients = [random_clients(8, 6, 2, 3, seed=s) for s in (20, 21)]  # 2 modules x 3 clients
    weights = [3.0, 1.0, 2.0]
    gen = torch.Generator().manual_seed(22)
    heads = [torch.randn(5, dtype=torch.bfloat16, generator=gen) for _ in range(3)]
    states = [
        peft_state(
            [clients[0][0][c], clients[1][0][c]],
            [clients[0][1][c], clients[1][1][c]],
            {"base_model.model.score.modules_to_save.default.bias": heads[c]},
        )
        for c in range(3)
    ]
    config = LoraFairConfig(steps=40)
    merged, report = lora_fair_aggregate(states, weights, config)
    assert list(merged) == list(states[0])
    for layer in range(2):
        module = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        fix = correct_module(clients[layer][0], clients[layer][1], weights, config)
        assert torch.equal(merged[f"{module}.lora_A.weight"], fix.a_bar)
        assert torch.equal(merged[f"{module}.lora_B.weight"], fix.b_corrected)
        assert report.modules[module].cos_after == fix.cos_after
    bias = merged["base_model.model.score.modules_to_save.default.bias"]
    expected = sum(w * h.double() for w, h in zip(weights, heads, strict=True)) / sum(weights)
    assert bias.dtype == torch.bfloat16 and torch.equal(bias, expected.to(torch.bfloat16))
    metrics = report.to_metrics()
    assert set(metrics) == {
        "lora_fair.cos_before",
        "lora_fair.cos_after",
        "lora_fair.solve_s",
        "lora_fair.diverged_modules",
    }
    cos = [s.cos_after for s in report.modules.values()]
    assert metrics["lora_fair.cos_after"] == pytest.approx(sum(cos) / 2)
    assert metrics["lora_fair.diverged_modules"] == 0.0 and metrics["lora_fair.solve_s"] > 0


def test_aggregate_counts_diverged_modules():
    a_list, b_list, weights = random_clients(6, 5, 2, 3, seed=23)
    states = [peft_state([a], [b], {}) for a, b in zip(a_list, b_list, strict=True)]
    merged, report = lora_fair_aggregate(states, weights, LoraFairConfig(lr=1e300))
    assert report.diverged_modules == 1
    assert all(torch.isfinite(t).all() for t in merged.values())


MODULE = "base_model.model.model.layers.0.self_attn.q_proj"
A_KEY, B_KEY = f"{MODULE}.lora_A.weight", f"{MODULE}.lora_B.weight"


def two_clients():
    a_list, b_list, _ = random_clients(6, 5, 2, 2, seed=24)
    return [peft_state([a], [b], {}) for a, b in zip(a_list, b_list, strict=True)]


def put(key, value, clients=(1,)):
    def corrupt(states):
        for c in clients:
            states[c][key] = value

    return corrupt


def drop(key, clients=(1,)):
    def corrupt(states):
        for c in clients:
            del states[c][key]

    return corrupt


def both(*corruptions):
    def corrupt(states):
        for one in corruptions:
            one(states)

    return corrupt


NAN_B = torch.full((6, 2), math.nan)

ERROR_CASES = {
    "missing key": (drop(B_KEY), [B_KEY, "client 1"]),
    "extra key": (put("extra", torch.ones(1)), ["extra", "client 1"]),
    "A width": (put(A_KEY, torch.ones(2, 4)), [MODULE, "lora_A", "client 1"]),
    "B height": (put(B_KEY, torch.ones(7, 2)), [MODULE, "lora_B", "client 1"]),
    "A rank on one client": (put(A_KEY, torch.ones(3, 5)), [MODULE, "client 1"]),
    "A and B ranks": (put(A_KEY, torch.ones(3, 5), clients=(0, 1)), [MODULE, "rank"]),
    "integer A": (put(A_KEY, torch.ones(2, 5, dtype=torch.int64)), [MODULE, "client 1"]),
    "non-finite B": (put(B_KEY, NAN_B, clients=(0,)), [MODULE, "client 0", "non-finite"]),
    "no A factor": (drop(A_KEY, clients=(0, 1)), [MODULE, "lora_A"]),
    "adapter-named factor": (
        put(f"{MODULE}.lora_A.default.weight", torch.ones(2, 5), clients=(0, 1)),
        [f"{MODULE}.lora_A.default.weight"],
    ),
    "plain key shapes": (
        both(put("bias", torch.ones(3), clients=(0,)), put("bias", torch.ones(4))),
        ["bias", "client 1"],
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_name_the_module_and_client(case):
    corrupt, names = ERROR_CASES[case]
    states = two_clients()
    corrupt(states)
    with pytest.raises(LoraFairError) as caught:
        lora_fair_aggregate(states, [1.0, 1.0])
    for name in names:
        assert name in str(caught.value)


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [0.0, 0.0], [1.0, math.inf]])
def test_bad_weights_are_rejected(weights):
    with pytest.raises(LoraFairError, match="weight"):
        lora_fair_aggregate(two_clients(), weights)


def test_no_lora_pair_is_an_error():
    with pytest.raises(LoraFairError, match="lora_A"):
        lora_fair_aggregate([{"bias": torch.ones(2)}], [1.0])


@pytest.mark.parametrize(
    "kwargs",
    [{"lam": -1.0}, {"steps": -1}, {"steps": 1.5}, {"lr": 0.0}, {"lr": math.nan}, {"tol": -1e-9}],
)
def test_config_is_validated(kwargs):
    with pytest.raises(ConfigError, match=f"`lora_fair.{next(iter(kwargs))}`"):
        LoraFairConfig(**kwargs)
