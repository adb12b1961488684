"""Loss evaluation in length-sorted trimmed batches, the eval section, what a round records."""

import math
import os

import pytest
import torch

from fedft.config import load_scenario
from fedft.data import Example, encode_examples
from fedft.errors import ConfigError
from fedft.evaluation import eval_threads, evaluate, global_metrics, idle_cores, local_metrics
from fedft.models import load_peft_model
from fedft.task import federated_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    scenario = load_scenario("simulations/default.toml")
    model, tok = load_peft_model(scenario.model, scenario.lora, 0)
    with torch.no_grad():  # a non-zero adapter: the untrained one is the base alone
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    return scenario, model, tok


@torch.no_grad()
def reference(model, data):
    """The obvious computation: every row alone at full width."""
    loss_sum, tokens, right, exact = 0.0, 0, 0, 0
    for i in range(len(data)):
        logits = model(
            input_ids=data.input_ids[i : i + 1], attention_mask=data.attention_mask[i : i + 1]
        ).logits[0, :-1]
        targets = data.labels[i, 1:]
        valid = targets != -100
        nll = torch.nn.functional.cross_entropy(logits[valid], targets[valid], reduction="sum")
        hit = logits.argmax(-1) == targets
        loss_sum += float(nll)
        tokens += int(valid.sum())
        right += int((hit & valid).sum())
        exact += int(bool((hit | ~valid).all()))
    return loss_sum / tokens, right / tokens, exact / len(data)


def test_trimmed_batches_give_the_per_row_figures(tiny):
    scenario, model, tok = tiny
    examples = list(federated_data(scenario).global_eval)[:40]
    examples += [Example("len " + "abcdef" * 3, "18", "len")]  # one long row among short ones
    data = encode_examples(examples, tok, 32)
    loss, token_acc, acc = reference(model, data)
    got = evaluate(model, data, 7, CPU)
    assert got.loss == pytest.approx(loss, rel=1e-5)
    assert got.token_accuracy == pytest.approx(token_acc)
    assert got.accuracy == pytest.approx(acc)
    assert got.perplexity == pytest.approx(math.exp(loss), rel=1e-5)
    assert got.examples == len(data)


def test_eval_section_is_checked_at_the_edge():
    for key, value in [
        ("eval.max_new_tokens", 0),
        ("eval.generate_every", 0),
        ("eval.max_generate_examples", -1),
        ("eval.generate_timeout_s", -1),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_scenario("simulations/default.toml", [f"{key}={value}"])
    cfg = load_scenario("simulations/default.toml", ["eval.generate_every=3"]).eval
    assert [r for r in range(8) if cfg.generates_in(r, 7)] == [0, 3, 6, 7]


def test_global_metrics_on_instruction_data(tiny):
    scenario, model, tok = tiny
    scenario = load_scenario(
        "simulations/default.toml", ["eval.max_generate_examples=6", "eval.max_new_tokens=3"]
    )
    examples = federated_data(scenario).global_eval
    data = encode_examples(list(examples), tok, 32)
    metrics = global_metrics(model, tok, data, examples, scenario, 1, CPU)
    assert {"eval_loss", "perplexity", "token_accuracy", "accuracy"} <= set(metrics)
    assert metrics["gen_examples"] == 6
    assert 0 <= metrics["exact_match"] <= 1 and 0 <= metrics["rouge_l"] <= 1
    quiet = load_scenario("simulations/default.toml", ["eval.generate_every=2"])
    assert "rouge_l" not in global_metrics(model, tok, data, examples, quiet, 1, CPU)


def test_plain_text_records_no_whole_text_accuracy(tiny):
    scenario, model, tok = tiny
    examples = [Example("", "abc dab cafe bead", "t"), Example("", "fade bad cab", "t")]
    data = encode_examples(examples, tok, 32)
    metrics = global_metrics(model, tok, data, examples, scenario, 0, CPU)
    assert "accuracy" not in metrics and "rouge_l" not in metrics
    assert 0 <= metrics["token_accuracy"] <= 1
    local = local_metrics(model, tok, data, examples, scenario, 0, CPU)
    assert set(local) == {"local_eval_loss", "local_token_accuracy"}


def test_local_metrics_score_the_clients_own_split(tiny):
    scenario, model, tok = tiny
    scenario = load_scenario("simulations/default.toml", ["eval.client_generate_examples=3"])
    examples = federated_data(scenario).client_eval[0]
    data = encode_examples(list(examples), tok, 32)
    local = local_metrics(model, tok, data, examples, scenario, 3, CPU)
    assert local["local_gen_examples"] == 3 and "local_rouge_l" in local
    assert local_metrics(model, tok, data.subset([]), (), scenario, 3, CPU) == {}


def test_eval_threads_restores_the_setting():
    before = torch.get_num_threads()
    with eval_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    assert 1 <= idle_cores(0.05) <= os.cpu_count()
