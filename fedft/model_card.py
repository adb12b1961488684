"""The model card (``README.md``) of an adapter folder: what was trained, on what, and how well.

peft writes an empty template card; fedft replaces it with the facts a reader of the folder needs:
the base model and where the folder finds it, the data and its split, the strategy and its
settings, the rounds, the global eval metrics of the round the adapter comes from, and how to
load and prompt it so that it sees what training saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedft.config import Scenario
from fedft.schedule import round_lr


def _base_line(scenario: Scenario, base_ref: str) -> str:
    model = scenario.model
    if model.source == "tiny":
        t = model.tiny
        what = (
            f"fedft's built-in tiny Llama-style model (hidden {t.hidden_size}, {t.num_layers} "
            f"layers, random init seeded by run.seed = {scenario.run.seed}), saved in the run "
            "folder"
        )
    elif model.source == "gguf":
        what = f"GGUF `{model.path}`, dequantized to a Hugging Face folder"
    else:
        what = f"Hugging Face folder `{model.path}`"
    return f"{what}; `base_model_name_or_path` = `{base_ref}` ({model.dtype})"


def _data_lines(scenario: Scenario) -> list[str]:
    data, part, fed = scenario.data, scenario.partition, scenario.federation
    source = data.source if not data.path else f"{data.source} `{data.path}`"
    if data.source == "builtin":
        source += f" ({data.num_examples} generated examples)"
    split = part.method + (f" (alpha {part.alpha})" if part.method == "dirichlet" else "")
    return [
        f"- **Data**: {source}; rows of at most {data.max_length} tokens",
        f"- **Split**: {split} over {fed.num_clients} clients, "
        f"{data.global_eval_size} examples held out for the global eval set",
    ]


def _strategy_line(scenario: Scenario) -> str:
    fed = scenario.federation
    parts = [f"`{fed.strategy}`", f"fraction_train {fed.fraction_train}"]
    lf, zo, fe = scenario.lora_fair, scenario.zo, scenario.ferret
    settings = {  # each strategy's own table (fedft.strategies), as the card shows it
        "lora_fair": f"lam {lf.lam}, {lf.steps} steps, lr {lf.lr}",
        "zo": f"zo: {zo.local_steps} local steps, lr {zo.lr}, eps {zo.eps}",
        "ferret": f"ferret: pool {fe.pool_size}, {fe.scaling} scaling, server lr {fe.server_lr}",
    }
    if fed.spec.settings:
        parts.append(settings[fed.spec.settings])
    return "- **Strategy**: " + ", ".join(parts)


def _train_lines(scenario: Scenario, server_round: int) -> list[str]:
    lora, train = scenario.lora, scenario.train
    if train.lr_schedule == "cosine":
        this = round_lr(train, server_round, scenario.federation.num_rounds)
        lr = (
            f"lr {train.lr} annealed (cosine, FlowerTune) to {train.lr_min} in round "
            f"{scenario.federation.num_rounds}; {this:.3g} in round {server_round}"
        )
    else:
        lr = f"lr {train.lr} (constant)"
    return [
        f"- **LoRA**: rank {lora.rank}, alpha {lora.alpha}, dropout {lora.dropout}, "
        f"on {', '.join(lora.target_modules)}",
        f"- **Local training**: {train.local_steps} steps a round, batch {train.batch_size}, {lr}",
    ]


def _metrics_lines(row: Mapping[str, Any] | None) -> list[str]:
    if row is None:
        return ["No global evaluation was recorded."]
    lines = [
        "| metric | value |",
        "| --- | --- |",
    ]
    for key, label in (
        ("eval_loss", "global eval loss"),
        ("perplexity", "perplexity"),
        ("accuracy", "exact-match accuracy (teacher-forced = greedy)"),
    ):
        if key in row:
            lines.append(f"| {label} | {row[key]:.4f} |")
    return lines


def _prompt_lines(scenario: Scenario, encodes_as_trained: bool) -> list[str]:
    data = scenario.data
    if data.chat:
        return [
            "Prompts were the tokenizer's chat template (one user turn, generation prompt):",
            "",
            "```python",
            "ids = tok.apply_chat_template([{'role': 'user', 'content': question}],",
            "                              add_generation_prompt=True, return_tensors='pt')",
            "```",
            "",
            "(If the tokenizer has no chat template, see the plain-prompt encoding in "
            "`config.toml`'s `data.template`.)",
        ]
    how = (
        "The saved tokenizer adds `bos` by itself, so `tok(text)` gives exactly those ids."
        if encodes_as_trained
        else "This tokenizer cannot add `bos` by itself: build the ids as above by hand."
    )
    return [
        f"Prompts were `[bos] + tok({data.template!r}.format(prompt=question), "
        "add_special_tokens=False)`; the answer follows and ends with `eos`. " + how,
        "",
        "```python",
        f"ids = tok({data.template!r}.format(prompt=question), return_tensors='pt').input_ids",
        "out = model.generate(ids, max_new_tokens=32, do_sample=False)",
        "```",
    ]


def model_card(
    scenario: Scenario,
    base_ref: str,
    server_round: int,
    row: Mapping[str, Any] | None,
    adapter_path: str = "adapter",
    encodes_as_trained: bool = True,
) -> str:
    """The ``README.md`` of an adapter folder.

    Parameters
    ----------
    scenario : Scenario
        The run's scenario.
    base_ref : str
        ``base_model_name_or_path`` as written in ``adapter_config.json``.
    server_round : int
        The round whose global adapter the folder holds.
    row : Mapping or None
        That round's ``kind = "round"`` row of ``metrics.jsonl`` (eval loss, accuracy, ...).
    adapter_path : str
        The adapter folder relative to the run folder (``adapter``, ``adapters/round-2``).
    encodes_as_trained : bool
        Whether the saved tokenizer's plain call reproduces training's prompt ids.

    Returns
    -------
    str
        Markdown with a YAML header (``library_name: peft``, tags).
    """
    fed = scenario.federation
    relative = not Path(base_ref).is_absolute()
    base_load = f"run / {base_ref!r}" if relative else repr(base_ref)
    where = (
        "`base_model_name_or_path` is relative to the run folder, so a copied or moved run folder "
        "still finds its base: load as above, or with `AutoPeftModelForCausalLM.from_pretrained"
        f"({adapter_path!r})` from inside the run folder (peft resolves the base from the "
        "working directory), or merge it with `fedft merge RUN_FOLDER --out DIR`."
        if relative
        else "The base lives outside the run folder, named by its absolute path: copy it along "
        "with the run folder, or give its new place to `fedft merge --base`."
    )
    lines = [
        "---",
        "library_name: peft",
        "pipeline_tag: text-generation",
        "tags: [fedft, lora, federated-learning, flower]",
        "---",
        "",
        f"# {scenario.run.name}: a LoRA adapter fine-tuned with fedft",
        "",
        "Fine-tuned federated with fedft (LoRA across clients on [Flower](https://flower.ai)): the "
        f"global adapter after round {server_round} of {fed.num_rounds}.",
        "",
        "## Training",
        "",
        f"- **Base model**: {_base_line(scenario, base_ref)}",
        *_data_lines(scenario),
        _strategy_line(scenario),
        f"- **Rounds**: {server_round} of {fed.num_rounds} (run.seed {scenario.run.seed})",
        *_train_lines(scenario, server_round),
        "",
        f"## Global eval metrics (round {server_round})",
        "",
        *_metrics_lines(row),
        "",
        "## Use",
        "",
        "```python",
        "from pathlib import Path",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        "run = Path('path/to/run-folder')",
        f"base = AutoModelForCausalLM.from_pretrained({base_load})",
        f"model = PeftModel.from_pretrained(base, run / {adapter_path!r})",
        f"tok = AutoTokenizer.from_pretrained(run / {adapter_path!r})",
        "```",
        "",
        where,
        "",
        *_prompt_lines(scenario, encodes_as_trained),
        "",
        "The whole scenario is in the run folder's `config.toml`; per-round metrics in "
        "`metrics.jsonl`.",
        "",
    ]
    return "\n".join(lines)
