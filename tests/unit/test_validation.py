import pytest
import torch

from fedft.algorithms.validation import FLOAT32_MAX, validate_factors
from fedft.errors import ReplyError

TEMPLATE = {"m.lora_A.weight": torch.zeros(2, 4), "m.lora_B.weight": torch.zeros(4, 2)}


def good():
    return {k: torch.randn_like(v) for k, v in TEMPLATE.items()}


@pytest.mark.parametrize("examples", [1e-3, 10, 1e30])
def test_a_good_reply_passes_untouched_up_to_float32_max(examples):
    """Finite values up to float32's largest pass, any finite count > 0, and nothing is changed."""
    reply = good()
    reply["m.lora_A.weight"][0, 0] = FLOAT32_MAX
    reply["m.lora_B.weight"][0, 0] = -FLOAT32_MAX
    before = {k: v.clone() for k, v in reply.items()}
    assert validate_factors(reply, TEMPLATE, examples) is None
    assert reply.keys() == before.keys()
    assert all(torch.equal(reply[k], before[k]) for k in before)


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
