"""engine.validators: the rules plugin configs use, their messages and their describe() text."""

import math

import attrs
import pytest

from engine import validators as v
from engine.config.recipe import field


@attrs.define
class Example:
    lr: float = field(0.1, "a rate", validator=v.finite_positive)
    betas: list[float] = field(
        [0.9, 0.99], "two betas", validator=v.each(v.in_range(0, 1, high_open=True), min_items=2, max_items=2)
    )
    layers: int = field(2, "a count", validator=v.int_range(1, 1024))
    groups: list[str] = field(["a"], "a subset", validator=v.subset_of("a", "b"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": math.nan}, "lr=nan must be a number in (0, 1e+06]"),
        ({"lr": math.inf}, "lr=inf must be a number in (0, 1e+06]"),
        ({"lr": 0.0}, "lr=0.0 must be"),
        ({"lr": 2e6}, "lr=2000000.0 must be"),
        ({"lr": True}, "lr=True must be"),  # a bool is not a number here
        ({"betas": [0.9]}, "betas=[0.9] must be a list of 2 values, each a number in [0, 1)"),
        ({"betas": [0.9, 1.0]}, "betas=[0.9, 1.0] must be"),
        ({"layers": 0}, "layers=0 must be an integer in 1..1024"),
        ({"layers": 1.0}, "layers=1.0 must be an integer"),
        ({"groups": []}, "groups=[] must be a non-empty list of distinct values from a, b"),
        ({"groups": ["a", "a"]}, "must be a non-empty list of distinct values"),
        ({"groups": ["c"]}, "groups=['c'] must be"),
    ],
)
def test_rules_refuse_with_a_message_naming_field_and_rule(kwargs, message):
    with pytest.raises(ValueError) as exc:
        Example(**kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_valid_values_pass_and_ints_count_as_numbers():
    Example(lr=1, betas=[0, 0.5], layers=1024, groups=["b", "a"])


def test_describe_gives_the_rule_text():
    rules = {f.name: v.describe(f.validator) for f in attrs.fields(Example)}
    assert rules == {
        "lr": "a number in (0, 1e+06]",
        "betas": "a list of 2 values, each a number in [0, 1)",
        "layers": "an integer in 1..1024",
        "groups": "a non-empty list of distinct values from a, b",
    }
    assert v.describe(attrs.validators.and_(v.finite, v.at_least(1))) == "a finite number, finite and >= 1"  # and_
    assert v.describe(None) == "" and v.describe(lambda *a: None) == ""  # unknown validators: no text


def test_length_counts_list_items():
    assert v.length(3)._ok([1, 2, 3]) and not v.length(3)._ok([1, 2]) and not v.length(3)._ok("abc")
    assert str(v.length(3)) == "a list of 3 values"


def test_large_bounds_read_as_powers():
    assert str(v.int_range(0, 2**62)) == "an integer in 0..2**62"
    assert str(v.seed) == "an integer in 0..2**63-1"
    assert str(v.int_range(1, 10**6)) == "an integer in 1..10**6"


def test_parameter_budget_is_one_line_bad_input():
    from engine.errors import BadInput

    v.check_parameter_count("plugins.x", v.MAX_PARAMETERS)  # at the limit: fine
    with pytest.raises(BadInput, match=r"^plugins\.x: the model would have about 1e\+12 parameters"):
        v.check_parameter_count("plugins.x", 10**12)
