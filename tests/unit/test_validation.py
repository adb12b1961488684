import pytest
import torch

from fedft.algorithms.validation import validate_factors
from fedft.errors import ReplyError

TEMPLATE = {"m.lora_A.weight": torch.zeros(2, 4), "m.lora_B.weight": torch.zeros(4, 2)}


def good():
    return {k: torch.randn_like(v) for k, v in TEMPLATE.items()}


def test_good_reply_passes():
    validate_factors(good(), TEMPLATE, 10)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r.pop("m.lora_A.weight"), "missing tensor 'm.lora_A.weight'"),
        (
            lambda r: r.update({"x.lora_A.weight": torch.zeros(1)}),
            "unknown tensor 'x.lora_A.weight'",
        ),
        (lambda r: r.update({"m.lora_B.weight": torch.zeros(4, 3)}), "shape (4, 3)"),
        (lambda r: r.update({"m.lora_B.weight": torch.zeros(4, 2, dtype=torch.float64)}), "dtype"),
        (lambda r: r["m.lora_A.weight"].__setitem__((0, 0), float("nan")), "non-finite"),
        (lambda r: r["m.lora_B.weight"].__setitem__((1, 1), float("inf")), "non-finite"),
    ],
)
def test_bad_replies_name_the_tensor(mutate, needle):
    reply = good()
    mutate(reply)
    with pytest.raises(ReplyError, match=__import__("re").escape(needle)):
        validate_factors(reply, TEMPLATE, 10)


@pytest.mark.parametrize("n", [0, -3, float("nan"), float("inf")])
def test_bad_example_counts(n):
    with pytest.raises(ReplyError, match="num-examples"):
        validate_factors(good(), TEMPLATE, n)
