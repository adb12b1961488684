"""A real Flower simulation (Ray backend) of the tiny model, end to end through the CLI.

One run serves every test here (and test_generation_metrics): the session's ``fedit_run``
(tests/integration/sims.py ``FEDIT_RUN``): 3 clients on a Dirichlet split, 3 rounds, an adapter
saved every round (``run.save_every = 1``) and the cosine schedule (issue 12, item 11).
"""

import json
import re

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM

from fedft.adapters import get_factors
from fedft.config import load_scenario
from fedft.data import encode_examples
from fedft.schedule import round_lr
from fedft.task import federated_data
from fedft.train import evaluate
from tests.integration.sims import FEDIT_CLIENTS, FEDIT_ROUNDS, FEDIT_STEPS

pytestmark = pytest.mark.integration
N = FEDIT_ROUNDS


@pytest.fixture(scope="module")
def run_dir(fedit_run):
    return fedit_run


def test_console_holds_fedft_lines_only(run_dir):
    """Redirected output: fedft's lines, no library warnings, notices, bars or colour codes."""
    lines = (run_dir.parent / "console.txt").read_text().splitlines()
    fedft_line = re.compile(rf"^(simulating default: |round \d+/{N} \| |run folder: )")
    assert [line for line in lines if not fedft_line.match(line)] == []
    assert len(lines) == N + 3  # simulating, round 0 .. N, run folder
    assert f"round {N}/{N}" in lines[-2]  # the progress display


def rows(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_global_eval_loss_fell(run_dir):
    rounds = rows(run_dir, "round")
    assert [r["round"] for r in rounds] == list(range(N + 1))
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"] - 0.1
    assert rounds[-1]["clients"] == FEDIT_CLIENTS


def test_per_client_records(run_dir):
    clients = rows(run_dir, "client")
    assert len(clients) == FEDIT_CLIENTS * N
    nodes = {c["node"] for c in clients}
    assert len(nodes) == FEDIT_CLIENTS
    for c in clients:
        assert c["bytes_up"] > 0
        config_bytes = c["bytes_down"] - c["bytes_up"]  # the factors down and up: same shapes
        if c["round"] == 1:
            assert config_bytes > 1000  # the scenario's text
        else:
            assert 0 < config_bytes < 100  # its digest and the round number: the node kept it
        assert c["examples"] > 0 and c["steps"] == FEDIT_STEPS and c["train_loss"] > 0


def test_run_folder_artifacts(run_dir):
    assert (run_dir / "metrics.png").stat().st_size > 1000
    resolved = load_scenario(run_dir / "config.toml")
    assert resolved.federation.num_rounds == N
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


def test_adapter_loads_in_peft_and_reproduces_the_final_eval(run_dir):
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base_model"  # relative to the run folder
    base = AutoModelForCausalLM.from_pretrained(run_dir / config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in get_factors(model).items())
    scenario = load_scenario(run_dir / "config.toml")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    data = encode_examples(
        list(federated_data(scenario).global_eval), tokenizer, scenario.data.max_length
    )
    result = evaluate(model, data, 64, torch.device("cpu"))
    final = rows(run_dir, "round")[-1]
    assert result.loss == pytest.approx(final["eval_loss"], rel=1e-4)


def test_adapter_tokenizer_prompts_as_training_did(run_dir):
    """``tok(template.format(prompt))`` from the adapter folder gives training's prompt ids."""
    from transformers import AutoTokenizer

    from fedft.data import encode_prompt
    from fedft.models import load_base

    scenario = load_scenario(run_dir / "config.toml")
    _, trained_with = load_base(scenario.model, scenario.run.seed)
    saved = AutoTokenizer.from_pretrained(run_dir / "adapter")
    for example in federated_data(scenario).global_eval:
        text = scenario.data.template.format(prompt=example.prompt)
        assert saved(text)["input_ids"] == encode_prompt(
            example.prompt, trained_with, scenario.data.template
        )
    assert f"round {N} of {N}" in (run_dir / "adapter" / "README.md").read_text()


# ---- run.save_every = 1 and the cosine schedule ----------------------------------------------


def load(run_dir, folder):
    base = AutoModelForCausalLM.from_pretrained(run_dir / "base_model")
    return get_factors(PeftModel.from_pretrained(base, run_dir / folder))


def test_an_adapter_for_every_round_loads(run_dir):
    saved = [load(run_dir, f"adapters/round-{r}") for r in range(1, N + 1)]
    final = load(run_dir, "adapter")
    assert all(torch.equal(saved[-1][k], final[k]) for k in final)
    for earlier, later in zip(saved, saved[1:], strict=False):
        assert not all(torch.equal(earlier[k], later[k]) for k in final)
    for r in range(1, N + 1):
        folder = run_dir / "adapters" / f"round-{r}"
        assert f"round {r} of {N}" in (folder / "README.md").read_text()
        assert (folder / "tokenizer.json").is_file()
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "base_model"


def test_round_adapter_loads_with_auto_peft_from_the_run_folder(run_dir, monkeypatch):
    monkeypatch.chdir(run_dir)
    model = AutoPeftModelForCausalLM.from_pretrained("adapters/round-1")
    got = get_factors(model)
    assert all(torch.equal(got[k], v) for k, v in load(run_dir, "adapters/round-1").items())


def test_clients_trained_with_the_cosine_rate_of_each_round(run_dir):
    scenario = load_scenario(run_dir / "config.toml")
    clients = rows(run_dir, "client")
    assert len(clients) == FEDIT_CLIENTS * N
    for row in clients:
        assert row["lr"] == pytest.approx(round_lr(scenario.train, row["round"], N), rel=1e-12)
    assert clients[-1]["lr"] == pytest.approx(1e-4)  # the last round trains at lr_min
