"""Data as people have it, offline: local Hugging Face `datasets` folders and files, chat messages.

Each format is written here by the test (with `datasets` itself where that is how people write
it) and read back through `data.source = "hf"` (or `jsonl`), the scenario's own loader.
"""

import json

import datasets
import pytest

from fedft.config import DataConfig, load_scenario
from fedft.data import IGNORE_INDEX, DataError, Example, char_tokenizer, encode_examples
from fedft.data.encode import encode_prompt
from fedft.errors import ConfigError
from fedft.local_files import check_local_files
from fedft.task import load_examples

PAIRS = [
    {"instruction": "What is 2+2?", "response": "4", "topic": "math"},
    {"instruction": "Capital of France?", "response": "Paris", "topic": "geo"},
    {"instruction": "Opposite of hot?", "response": "cold", "topic": "words"},
]
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Name a colour"},
            {"role": "assistant", "content": "Blue"},
        ]
    },
    {"messages": [{"role": "user", "content": "Yes?"}, {"role": "assistant", "content": "No"}]},
]
# A chat template in the shape of SmolLM2-Instruct's (ChatML), small enough for the char tokenizer
CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFT_CACHE", str(tmp_path / "cache"))  # load_dataset's Arrow cache


def hf(path, **kwargs):
    return DataConfig(source="hf", path=str(path), **kwargs)


def pairs_of(examples):
    return [(e.prompt, e.response, e.key) for e in examples]


EXPECTED = [(p["instruction"], p["response"], p["topic"]) for p in PAIRS]


def test_a_dataset_saved_with_save_to_disk(tmp_path):
    datasets.Dataset.from_list(PAIRS).save_to_disk(tmp_path / "saved")
    examples = load_examples(hf(tmp_path / "saved", key_field="topic"), 0)
    assert pairs_of(examples) == EXPECTED


def test_a_dataset_dict_saved_with_save_to_disk_reads_its_split(tmp_path):
    splits = {"train": PAIRS[:2], "test": PAIRS[2:]}
    dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
    dd.save_to_disk(tmp_path / "dd")
    train = load_examples(hf(tmp_path / "dd", key_field="topic"), 0)
    assert pairs_of(train) == EXPECTED[:2]
    test = load_examples(hf(tmp_path / "dd", key_field="topic", split="test"), 0)
    assert pairs_of(test) == EXPECTED[2:]
    with pytest.raises(DataError, match=r"`data.split`: .* no split 'dev' \(it has \['train'"):
        load_examples(hf(tmp_path / "dd", split="dev"), 0)


def test_parquet_json_jsonl_and_csv_files_load_with_load_dataset(tmp_path):
    table = datasets.Dataset.from_list(PAIRS)
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.to_csv(str(tmp_path / "d.csv"), index=False)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    (tmp_path / "d.json").write_text(json.dumps(PAIRS))
    for name in ("d.parquet", "d.csv", "d.jsonl", "d.json"):
        assert pairs_of(load_examples(hf(tmp_path / name, key_field="topic"), 0)) == EXPECTED
    # CSV cells stay text, as with fedft's own CSV reader: an answer "4" or "NA" is not a number
    (tmp_path / "n.csv").write_text("instruction,response\nq,4\nr,NA\n")
    assert [e.response for e in load_examples(hf(tmp_path / "n.csv"), 0)] == ["4", "NA"]
    # a folder of data files of one kind (sorted by name), and an explicit format
    folder = tmp_path / "shards"
    folder.mkdir()
    datasets.Dataset.from_list(PAIRS[:1]).to_parquet(str(folder / "part-0.parquet"))
    datasets.Dataset.from_list(PAIRS[1:]).to_parquet(str(folder / "part-1.parquet"))
    data = hf(folder, key_field="topic", hf_format="parquet")
    assert pairs_of(load_examples(data, 0)) == EXPECTED


def test_chat_messages_in_a_saved_dataset_and_in_json_lines(tmp_path):
    datasets.Dataset.from_list(CHATS).save_to_disk(tmp_path / "chat")
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    for data in (
        hf(tmp_path / "chat"),
        DataConfig(source="jsonl", path=str(tmp_path / "chat.jsonl")),
    ):
        first, second = load_examples(data, 0)
        assert first.response == "Blue" and second.response == "No"
        assert first.history == (
            ("system", "Be brief."),
            ("user", "Hi"),
            ("assistant", "Hello"),
            ("user", "Name a colour"),
        )
        assert first.prompt == "System: Be brief.\nUser: Hi\nAssistant: Hello\nUser: Name a colour"
        assert second.history == (("user", "Yes?"),)


def test_a_conversation_trains_on_its_last_assistant_turn_only():
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHATML
    history = (("user", "Hi"), ("assistant", "Hello"), ("user", "Colour?"))
    example = Example("User: Hi\nAssistant: Hello\nUser: Colour?", "Blue", "", history)
    row = encode_examples([example], tokenizer, 96, chat=True)
    ids, labels = row.input_ids[0].tolist(), row.labels[0].tolist()
    rendered = "<|user|>Hi\n<|assistant|>Hello\n<|user|>Colour?\n<|assistant|>"
    prompt = encode_prompt(example.prompt, tokenizer, chat=True, history=history)
    assert tokenizer.decode(prompt) == rendered
    assert ids[: len(prompt)] == prompt and set(labels[: len(prompt)]) == {IGNORE_INDEX}
    trained = [label for label in labels if label != IGNORE_INDEX]
    assert trained == [*tokenizer("Blue", add_special_tokens=False)["input_ids"], 2]  # + eos
    # without a chat template the plain rendering goes through data.template, bos first
    plain = encode_prompt(example.prompt, char_tokenizer(), template="{prompt}\n", chat=True)
    assert char_tokenizer().decode(plain[1:]) == example.prompt + "\n"


def test_bad_conversations_are_one_line_errors_naming_the_row(tmp_path):
    bad = [
        ({"messages": []}, "field 'messages' must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "x"}]}, "must be the assistant's"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "no message before"),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "'content'"),
        ({"messages": ["hi", {"role": "assistant", "content": "x"}]}, r"messages\[0\]"),
    ]
    for record, expected in bad:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(record) + "\n")
        with pytest.raises(DataError, match=expected) as err:
            load_examples(DataConfig(source="jsonl", path=str(path)), 0)
        assert "line 1" in str(err.value) and "\n" not in str(err.value)


def test_user_errors_name_the_folder_the_column_and_the_format(tmp_path):
    datasets.Dataset.from_list(PAIRS).save_to_disk(tmp_path / "saved")
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.parquet").write_text("not parquet")
    cases = [
        (hf(tmp_path / "missing"), "`data.path`: no such file or folder: .*missing"),
        (hf(tmp_path / "saved", prompt_field="question"), "no column 'question' .*'instruction'"),
        (hf(tmp_path / "saved", response_field="answer"), "`data.response_field`: .*'answer'"),
        (hf(tmp_path / "saved", key_field="label"), "`data.key_field`: .*'label'"),
        (hf(tmp_path / "notes.txt"), "cannot tell the format of notes.txt .*`data.hf_format`"),
        (hf(tmp_path / "empty"), "holds no data files .*`data.hf_format`"),
        (hf(tmp_path / "broken.parquet"), "cannot read .*broken.parquet as parquet"),
    ]
    for data, expected in cases:
        with pytest.raises(DataError, match=expected) as err:
            load_examples(data, 0)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="data.hf_format.*expected one of"):
        load_scenario(None, ["data.source='hf'", "data.path='x'", "data.hf_format='xml'"])
    with pytest.raises(ConfigError, match="data.path.*required"):
        load_scenario(None, ["data.source='hf'"])
    missing = load_scenario(None, ["data.source='hf'", f"data.path='{tmp_path / 'nope'}'"])
    with pytest.raises(ConfigError, match="data.path.*no dataset folder or file"):
        check_local_files(missing)  # before any model or Ray start


def test_an_alpaca_style_record_joins_its_input_to_the_instruction(tmp_path):
    rows = [
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]
    datasets.Dataset.from_list(rows).to_json(str(tmp_path / "alpaca.json"))
    data = hf(tmp_path / "alpaca.json", response_field="output", input_field="input")
    examples = load_examples(data, 0)
    assert [(e.prompt, e.response) for e in examples] == [
        ("Translate\n\nchat", "cat"),
        ("Say hi", "hi"),
    ]
