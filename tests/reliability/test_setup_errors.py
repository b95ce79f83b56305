"""A value that passes validation but fails inside torch during setup is one line naming the
plugin (and the key, when torch's message names it); nothing is written. The same during training
is a one-line training failure naming the step and the plugin."""

from __future__ import annotations

import uuid

import pytest

from engine import BadInput, TrainingFailure
from engine.rundir.directory import RunDir
from engine.testing import TOY, train


@pytest.mark.parametrize(
    "config, expected",
    [
        (
            {"toy_sgd": {"lr": -1.0}},
            r"^plugin 'toy_sgd' failed to build the optimizer \(ValueError: Invalid learning "
            r"rate: -1\.0\); check \[plugins\.toy_sgd\]$",
        ),
        (
            {"toy_sgd": {"momentum": -1.0}},
            r"^plugin 'toy_sgd' failed to build the optimizer \(ValueError: Invalid "
            r"momentum value: -1\.0\); check plugins\.toy_sgd\.momentum$",
        ),
    ],
)
def test_torch_error_in_a_setup_hook_names_the_plugin(config, expected):
    out = f"memory://setup-{uuid.uuid4().hex}"
    with pytest.raises(BadInput, match=expected):
        train(TOY, config=config, out=out)
    run_dir = RunDir(out)
    assert not run_dir.fs.exists(run_dir.path) or run_dir.fs.find(run_dir.path) == []  # nothing written


def test_error_of_a_plugin_during_training_is_one_line_naming_it():
    with pytest.raises(
        TrainingFailure,
        match=r"^step 1: plugin 'toy_data' failed \(RuntimeError: Trying to create "
        r"tensor with negative dimension -3: \[-3\]\); check "
        r"\[plugins\.toy_data\]; no checkpoint was written yet: ",
    ):
        train(TOY, config={"toy_data": {"batch_size": -3}})  # the data is built fine; the first batch fails
