"""The plugin author's tests: a few lines each, with engine.testing's toy plugins."""

import pytest
import torch
from hookmix_ema import EMA

from engine import BadInput
from engine.testing import TOY, assert_distributed_matches, assert_resumes_exactly, train


def test_ema_tracks_the_weights_and_evaluates_with_them():
    result = train([*TOY, EMA], config={"ema": {"decay": 0.5}}, steps=4)
    ema = result.plugins["ema"]  # the enabled plugin instances by name (engine.Result.plugins)
    weight = result.model.state_dict()["1.weight"]
    assert not torch.equal(ema.shadow["1.weight"], weight)  # an average, not a copy
    assert result.metrics[-1]["ema/decay"] == 0.5


def test_ema_resumes_bit_exactly():
    assert_resumes_exactly([*TOY, EMA], config={"ema": {"decay": 0.9}}, steps=6, eval_interval=2)


def test_bad_decay_is_bad_input():
    with pytest.raises(BadInput, match="decay"):
        train([*TOY, EMA], config={"ema": {"decay": 1.5}}, steps=1)


def test_ema_under_two_ranks_matches_one_process():
    # 2 processes (torch.distributed.run, gloo): the shadow weights are bit-identical on both ranks after
    # every step, and the run matches the 1-process run within 1e-5 (toy SGD: the averaged gradient
    # differs from the 1-process batch mean only in the last float32 bits)
    assert_distributed_matches([*TOY, EMA], config={"ema": {"decay": 0.5}}, steps=4, atol=1e-5, eval_interval=2)
