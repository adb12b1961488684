"""Quantized bases (bitsandbytes int8 / nf4) on the CPU: real bnb layers, no mocks."""

import sys
from pathlib import Path

import pytest
import torch

from clients.runtimes import torch_lora
from clients.runtimes.torch_lora import TorchLora
from fedft.adapters import factor_params, get_factors, set_factors_
from fedft.algorithms.validation import validate_factors
from fedft.config import LoraConfig, ModelConfig, TinyModelConfig, load_scenario
from fedft.data import builtin_task, encode_examples
from fedft.errors import ConfigError
from fedft.flower_records import factors_to_record, record_nbytes, record_to_factors
from fedft.models import load_base, tiny_model, wrap_lora
from fedft.quantize import (
    base_weight_bytes,
    check_clients,
    check_platform,
    dequantized_weight,
    quantized_layers,
    require_bitsandbytes,
)
from fedft.zo.rng import layout_of, perturbation_numpy
from fedft.zo.step import spsa_step_

TINY = ModelConfig()
LORA = LoraConfig(rank=4, target_modules=("q_proj", "v_proj", "down_proj", "lm_head"))
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTIZED = ["int8", "nf4"]


def rel(got, want):
    return float((got - want).detach().norm() / want.detach().norm())


def a_batch(tokenizer, size=8):
    data = encode_examples(builtin_task(size, seed=0), tokenizer, 32)
    return next(data.batches(size, seed=0, steps=1))


def seeded_lora(model, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return wrap_lora(model, LORA)


def random_factors(model, seed=1, std=0.05):
    gen = torch.Generator().manual_seed(seed)
    return {k: std * torch.randn(v.shape, generator=gen) for k, v in get_factors(model).items()}


def dequantized_reference(quantized, model_cfg=TINY):
    """The fp32 tiny model holding exactly the weights the quantized one multiplies by."""
    reference, _ = tiny_model(model_cfg, 0)
    for name in quantized_layers(quantized):
        reference.get_submodule(name).weight.data = dequantized_weight(
            quantized.get_submodule(name)
        )
    return reference


@pytest.mark.parametrize("quantization", QUANTIZED)
def test_linear_layers_are_quantized_embeddings_and_lm_head_are_not(quantization):
    model, _ = load_base(TINY, 0, quantization, "cpu")
    kinds = quantized_layers(model)
    expected = {f"model.layers.{i}.{p}" for i in range(TINY.tiny.num_layers) for p in PROJECTIONS}
    assert {k.replace("self_attn.", "").replace("mlp.", "") for k in kinds} == expected
    assert set(kinds.values()) == {quantization}
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.float32


def test_a_hugging_face_folder_with_tied_embeddings_stays_tied(tmp_path):
    """The path SmolLM2 takes: a folder on disk whose lm_head is the input embedding."""
    fp32, tokenizer = tiny_model(TINY, 0)
    fp32.config.tie_word_embeddings = True
    fp32.tie_weights()
    fp32.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    folder = ModelConfig(source="hf", path=str(tmp_path))
    model, _ = load_base(folder, 0, "nf4", "cpu")
    # the kept float tensors were copied out of the checkpoint's memory map: it is unmapped, so
    # the fp32 file's pages (all read while quantizing) do not stay resident
    maps = Path("/proc/self/maps")
    assert not maps.exists() or str(tmp_path / "model.safetensors") not in maps.read_text()
    assert model.lm_head.weight is model.model.embed_tokens.weight  # one tensor, still tied
    assert torch.equal(model.lm_head.weight, fp32.lm_head.weight)
    assert set(quantized_layers(model).values()) == {"nf4"}
    tied = fp32.model.embed_tokens.weight.numel() * 4
    untied, _ = tiny_model(TINY, 0)
    assert base_weight_bytes(fp32) == base_weight_bytes(untied) - tied  # counted once


def test_base_bytes_count_the_quantized_weights_and_their_scales():
    none, tokenizer = load_base(TINY, 0)
    int8, _ = load_base(TINY, 0, "int8", "cpu")
    nf4, _ = load_base(TINY, 0, "nf4", "cpu")
    int8(**a_batch(tokenizer, 2))  # after a forward, bnb moves the int8 row scales to the layer
    shapes = [none.get_submodule(name).weight.shape for name in quantized_layers(int8)]
    weights = sum(rows * cols for rows, cols in shapes)
    rest = base_weight_bytes(none) - 4 * weights  # embeddings, norms, lm_head: float32 in all
    # int8: one byte a weight plus a float32 scale per row
    assert base_weight_bytes(int8) == rest + weights + 4 * sum(rows for rows, _ in shapes)
    # nf4: half a byte a weight, a float32 scale per block of 64, a 16-entry codebook per layer
    assert base_weight_bytes(nf4) == rest + weights // 2 + 4 * weights // 64 + 64 * len(shapes)
    assert base_weight_bytes(nf4) <= 0.3 * base_weight_bytes(none)


@pytest.mark.parametrize("quantization", QUANTIZED)
def test_every_mode_computes_with_the_dequantized_weights(quantization):
    """Eval, then training: the same float32 function and gradients as fp32 on those weights.

    bitsandbytes 0.50 alone fails this on the CPU: nf4 repacks for a bf16 kernel without autograd
    after a no-grad eval pass (the LoRA gradients below it go missing), int8 rounds activations to
    int8 in eval mode (logits about 3% off). fedft.quantize pins the training kernel.
    """
    base, tokenizer = load_base(TINY, 0, quantization, "cpu")
    reference = seeded_lora(dequantized_reference(base))
    quantized = seeded_lora(base)
    factors = random_factors(quantized)
    set_factors_(quantized, factors)
    set_factors_(reference, factors)
    batch = a_batch(tokenizer)
    for model in (quantized, reference):
        model.eval()
    with torch.no_grad():
        # same ops on the same float32 values; 1e-5 allows for reordered sums
        assert rel(quantized(**batch).logits, reference(**batch).logits) < 1e-5
    grads = {}
    for key, model in (("q", quantized), ("r", reference)):
        model.train()
        model(**batch).loss.backward()
        grads[key] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads["q"]) == set(grads["r"])
    for name, want in grads["r"].items():
        assert grads["q"][name] is not None, f"{name}: no gradient reached it"
        assert rel(grads["q"][name], want) < 1e-4, name


@pytest.mark.parametrize(
    ("quantization", "weight_bound", "logits_bound"),
    # NF4 (16 levels at normal quantiles, one absmax per block of 64) leaves a relative RMS error
    # of 0.092 on Gaussian weights (Monte Carlo); int8 with one absmax per row rounds to steps of
    # absmax / 127, a relative RMS error of 0.006 for rows of 64-128 Gaussian weights. A
    # well-conditioned network's logits move by about the weights' relative error (measured:
    # 0.094 and 0.0065); the bounds leave margin for the few layers of the tiny model.
    [("nf4", 0.105, 0.15), ("int8", 0.008, 0.015)],
)
def test_outputs_stay_close_to_fp32_within_the_format_error(
    quantization, weight_bound, logits_bound
):
    # transformers' init scale (0.02), not the tiny default (0.2): that random base is chaotic
    # (attention logits ~ 0.2^2 * 64), and NF4's 9% weight error moves its logits by 44%.
    model_cfg = ModelConfig(tiny=TinyModelConfig(init_std=0.02))
    fp32, tokenizer = tiny_model(model_cfg, 0)
    quantized, _ = load_base(model_cfg, 0, quantization, "cpu")
    for name in quantized_layers(quantized):
        want = fp32.get_submodule(name).weight
        assert rel(dequantized_weight(quantized.get_submodule(name)), want) < weight_bound, name
    batch = a_batch(tokenizer)
    with torch.no_grad():
        assert rel(quantized(**batch).logits, fp32(**batch).logits) < logits_bound


def mixed_scenario(*overrides):
    groups = "[{partitions=[0], quantization='nf4'}, {partitions=[1], quantization='int8'}]"
    base = ["federation.num_clients=3", "partition.method='iid'", f"client_groups={groups}"]
    return load_scenario(None, [*base, *overrides])


@pytest.mark.integration
def test_quantized_replies_are_indistinguishable_from_unquantized_ones():
    scenario = mixed_scenario("train.local_steps=2")
    assert [scenario.client_for(p).quantization for p in range(3)] == ["nf4", "int8", "none"]
    models = {p: torch_lora.client_model(scenario, p)[0] for p in range(3)}
    assert len({id(m) for m in models.values()}) == 3
    template = get_factors(models[2])
    start = random_factors(models[2])
    for partition, model in models.items():
        assert get_factors(model).keys() == template.keys()
        # every process builds the same initial adapter, quantized or not
        assert all(torch.equal(get_factors(model)[k], v) for k, v in template.items())
        trained = TorchLora().train_round(scenario, partition, start, 1, node=partition)
        factors, metrics = trained.factors, trained.metrics
        reply = record_to_factors(factors_to_record(factors))  # through the wire format
        validate_factors(reply, template, metrics["num-examples"])
        assert all(reply[k].dtype == torch.float32 for k in reply)
        assert record_nbytes(factors_to_record(factors)) == record_nbytes(
            factors_to_record(template)
        )
        set_factors_(model, reply)  # and the global factors load back into a quantized model
        assert all(torch.equal(get_factors(model)[k], v) for k, v in reply.items())


@pytest.mark.integration
@pytest.mark.parametrize("partition", [0, 1], ids=QUANTIZED[::-1])
def test_a_quantized_client_trains_and_its_loss_falls(partition):
    scenario = mixed_scenario("train.local_steps=30")
    model, _ = torch_lora.client_model(scenario, partition)
    assert quantized_layers(model)
    start = get_factors(model)
    before = torch_lora.evaluate_round(scenario, partition, start).loss
    trained = TorchLora().train_round(scenario, partition, start, 1, node=partition)
    factors, metrics = trained.factors, trained.metrics
    after = torch_lora.evaluate_round(scenario, partition, factors).loss
    assert metrics["steps"] == 30
    assert after < before - 1.0, (before, after)  # measured: 4.6 -> about 1.7


@pytest.mark.parametrize("quantization", QUANTIZED)
def test_spsa_step_on_a_quantized_base_matches_the_directional_derivative(quantization):
    """A zeroth-order step (forward passes only, LoRA factors perturbed) on a quantized base.

    Its g is the central difference (L(w + eps z) - L(w - eps z)) / (2 eps), which must equal
    the directional derivative <grad L, z> up to O(eps^2) and float32 rounding of L over 2 eps
    (measured: relative 6e-5 to 5e-4). bitsandbytes' own int8 eval path misses by 90%.
    """
    base, tokenizer = load_base(TINY, 0, quantization, "cpu")
    model = seeded_lora(base)
    set_factors_(model, random_factors(model))
    names = sorted(get_factors(model))
    params = factor_params(model, names)
    batch = a_batch(tokenizer)
    model.eval()  # as the zo client runs: no dropout, so L+ and L- see one function
    with torch.no_grad():
        loss_before = float(model(**batch).loss)
    grads = torch.autograd.grad(model(**batch).loss, params)
    seed = 7
    z = perturbation_numpy(seed, layout_of(zip(names, params, strict=True)))
    directional = sum(
        float((g * torch.from_numpy(z[n]).float()).sum()) for n, g in zip(names, grads, strict=True)
    )
    start = [p.detach().clone() for p in params]

    def loss_fn():
        return float(model(**batch).loss)

    g = spsa_step_(params, loss_fn, seed, eps=1e-3, lr=1e-2)
    assert g == pytest.approx(directional, rel=1e-2)
    moved = [(p.detach() - s).abs().max() for p, s in zip(params, start, strict=True)]
    assert max(moved) == pytest.approx(1e-2 * abs(g), rel=1e-3)  # w -= lr g z, |z| = 1
    with torch.no_grad():
        assert float(model(**batch).loss) < loss_before  # a step along -g z descends


def test_a_device_without_a_bitsandbytes_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="client.quantization") as err:
        check_platform("nf4", torch.device("meta"))
    assert "meta" in str(err.value) and "\n" not in str(err.value)


def test_missing_bitsandbytes_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what the import system does for it
    with pytest.raises(ConfigError, match="client.quantization.*bitsandbytes") as err:
        require_bitsandbytes()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="client.quantization"):
        load_base(TINY, 0, "int8", "cpu")
    with pytest.raises(ConfigError, match="client.quantization"):
        check_clients(mixed_scenario())  # what `fedft simulate` can check before starting


def test_a_scenario_this_machine_can_run_passes_the_check():
    check_clients(mixed_scenario())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="client.device"):
        load_base(TINY, 0, "nf4", "cuda")
    with pytest.raises(ConfigError, match="client.device"):
        check_clients(mixed_scenario("client.device='cuda'"))
