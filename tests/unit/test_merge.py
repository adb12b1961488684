"""``fedft merge``: the merged model computes what base plus adapter computed; clear errors."""

import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedft.cli import main
from tests.unit.runs import scenario, write_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("merge") / "run"
    (run_dir).mkdir()
    (run_dir / "config.toml").write_text("")  # marks the run folder
    write_run(scenario(), run_dir)
    return run_dir


def test_merged_logits_equal_the_adapter_models(run, tmp_path, capsys):
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    assert "merged model:" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(run / "base_model"), run / "adapter"
    )
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids = tok(["min abcd\n", "len fab\n"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = adapted(**ids).logits
        got = merged(**ids).logits
    base = AutoModelForCausalLM.from_pretrained(run / "base_model")
    with torch.no_grad():
        assert not torch.allclose(base(**ids).logits, want, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert tok("x")["input_ids"][0] == tok.bos_token_id  # tokenizer as trained
    assert "fedft merge" in (tmp_path / "merged" / "README.md").read_text()


def test_merge_finds_a_moved_run_folders_base(run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    assert main(["merge", str(moved / "adapter"), "--out", str(tmp_path / "m")]) == 0


def one_line_error(capsys, argv, needle):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedft: error:"), err
    assert needle in err
    return err


def test_errors_name_the_folder_and_write_nothing(run, tmp_path, capsys):
    out = tmp_path / "out"
    one_line_error(capsys, ["merge", str(tmp_path / "nope"), "--out", str(out)], "nope")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["merge", str(tmp_path / "empty"), "--out", str(out)], "no adapter_")
    bad = tmp_path / "bad"
    shutil.copytree(run / "adapter", bad)
    (bad / "adapter_config.json").write_text("{not json")
    one_line_error(capsys, ["merge", str(bad), "--out", str(out)], "not valid JSON")
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (bad / "adapter_model.safetensors").unlink()
    one_line_error(capsys, ["merge", str(bad), "--out", str(out)], "adapter_model.safetensors")
    lost = tmp_path / "lost"
    shutil.copytree(run / "adapter", lost)  # outside its run folder: base_model is not there
    one_line_error(capsys, ["merge", str(lost), "--out", str(out)], "--base")
    assert not out.exists()
    out.mkdir()
    one_line_error(capsys, ["merge", str(run), "--out", str(out)], "already exists")
    assert list(out.iterdir()) == []
    wrong = tmp_path / "wrong_base"
    base = AutoModelForCausalLM.from_pretrained(run / "base_model")
    base.config.hidden_size = 32
    AutoModelForCausalLM.from_config(base.config).save_pretrained(wrong)
    err = one_line_error(
        capsys,
        ["merge", str(run), "--out", str(tmp_path / "o2"), "--base", str(wrong)],
        "size mismatch",
    )
    assert str(run / "adapter") in err
    assert not (tmp_path / "o2").exists()
