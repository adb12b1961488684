"""Greedy-answer metrics: exact match, ROUGE-L against rouge-score's own outputs, batching."""

import math

import pytest
import torch
from rouge_score import rouge_scorer

from fedft.config import load_scenario
from fedft.data import Example, char_tokenizer, encode_prompt
from fedft.generation import exact_match, greedy_answers, normalize, rouge_l, score_generation
from fedft.models import load_peft_model

PAIRS = [  # (prediction, reference)
    ("the cat sat on the mat", "the cat on a mat"),
    ("Blue.", "blue"),
    ("I am a chatbot, and I like to talk", "I am a bot that likes talking"),
    ("five", "5"),
    ("", "something"),
    ("a b c d e f", "f e d c b a"),
]


@pytest.mark.parametrize(("prediction", "reference"), PAIRS)
def test_rouge_l_is_rouge_scores_on_ascii_text(prediction, reference):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)  # its default tokenizer
    expected = scorer.score(reference, prediction)["rougeL"].fmeasure
    assert rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat on a mat") = "the cat on mat": P = 4/6, R = 4/5
    p, r = 4 / 6, 4 / 5
    assert rouge_l("the cat sat on the mat", "the cat on a mat") == pytest.approx(
        2 * p * r / (p + r)
    )
    assert rouge_l("a b c d e f", "f e d c b a") == pytest.approx(1 / 6)  # LCS of a reversal: 1
    assert rouge_l("Blue.", "blue") == 1.0


def test_rouge_l_scores_other_scripts():
    """rouge-score's default tokenizer drops non-ASCII letters; the words here keep them."""
    default = rouge_scorer.RougeScorer(["rougeL"]).score("γεια σου κόσμε", "γεια σου")
    assert default["rougeL"].fmeasure == 0.0
    assert rouge_l("γεια σου", "γεια σου κόσμε") == pytest.approx(0.8)  # P 1, R 2/3


def test_exact_match_ignores_case_punctuation_and_spacing():
    assert normalize("  Hello,   World! ") == "hello world"
    assert exact_match("Blue.", "blue") == 1.0
    assert exact_match("blue sky", "blue") == 0.0
    assert exact_match("5", "5") == 1.0 and exact_match("", "5") == 0.0


class AnswerModel(torch.nn.Module):
    """A stand-in for a causal LM's ``generate``: appends a fixed answer per prompt, then eos."""

    def __init__(self, answers, pad, eos):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.answers, self.pad, self.eos = answers, pad, eos
        self.batch_widths = []

    def generate(self, input_ids, attention_mask, generation_config):
        self.batch_widths.append(input_ids.shape[1])
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            assert mask.tolist() == sorted(mask.tolist())  # left padding: zeros, then ones
            prompt = tuple(ids[mask.bool()].tolist())
            answer = self.answers[prompt][: generation_config.max_new_tokens]
            rows.append(ids.tolist() + answer + [self.eos, 7, 7])  # junk after eos is cut
        width = max(map(len, rows))
        return torch.tensor([r + [self.pad] * (width - len(r)) for r in rows])


def test_score_generation_maps_answers_back_to_their_examples():
    tok = char_tokenizer()
    examples = [
        Example("longest prompt here", "yes", "a"),
        Example("", "plain text: skipped", "a"),
        Example("mid prompt", "no", "b"),
        Example("x", "maybe so", "c"),
    ]
    answers = {"longest prompt here": "yes", "mid prompt": "No.", "x": "maybe not"}
    table = {
        tuple(encode_prompt(p, tok)): tok(a, add_special_tokens=False)["input_ids"]
        for p, a in answers.items()
    }
    model = AnswerModel(table, tok.pad_token_id, tok.eos_token_id)
    result = score_generation(model, tok, examples, limit=3, max_new_tokens=20, batch_size=2)
    assert result.answers == ("yes", "No.", "maybe not")  # in the examples' order
    assert result.examples == 3
    assert result.exact_match == pytest.approx(2 / 3)
    assert result.rouge_l == pytest.approx((1 + 1 + 0.5) / 3)
    assert len(model.batch_widths) == 2  # 3 prompts in batches of 2, shortest first
    assert model.batch_widths[0] < model.batch_widths[1]


def test_score_generation_caps_examples_prompt_length_and_time():
    tok = char_tokenizer()
    examples = [Example(f"q{i}", "a", "k") for i in range(5)] + [Example("q" * 40, "a", "k")]
    table = {
        tuple(encode_prompt(e.prompt, tok)): [tok.convert_tokens_to_ids("a")] for e in examples
    }
    model = AnswerModel(table, tok.pad_token_id, tok.eos_token_id)
    capped = score_generation(model, tok, examples, limit=2, max_new_tokens=4, batch_size=8)
    assert capped.examples == 2 and capped.exact_match == 1.0
    short = score_generation(
        model, tok, examples, limit=10, max_new_tokens=4, batch_size=8, max_prompt_tokens=10
    )
    assert short.examples == 5  # the 41-token prompt is longer than training keeps
    late = score_generation(
        model, tok, examples, limit=10, max_new_tokens=4, batch_size=8, timeout_s=1e-9
    )
    assert late.examples == 0 and math.isnan(late.rouge_l)


@pytest.fixture(scope="module")
def tiny():
    scenario = load_scenario("simulations/default.toml")
    model, tok = load_peft_model(scenario.model, scenario.lora, 0)
    return model, tok


def test_batched_greedy_answers_equal_one_at_a_time(tiny):
    """Left padding with its attention mask changes no answer of the real (tiny) model."""
    model, tok = tiny
    prompts = [encode_prompt(p, tok) for p in ("min cafe", "len ab", "fst bdcafe", "x", "max ef")]
    batched = greedy_answers(model, tok, prompts, max_new_tokens=6, batch_size=5)
    alone = [greedy_answers(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == alone
    assert all(a is not None and len(a) <= 6 for a in batched)
