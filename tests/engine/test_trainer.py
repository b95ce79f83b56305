"""The Trainer declares every attribute it has in ``__init__``; setup and training only fill them in."""

from __future__ import annotations

import io

import pytest

from engine.loop import Trainer
from engine.testing import TOY, make_recipe


def test_setup_and_training_add_no_attribute_that_init_did_not_declare():
    recipe, registry = make_recipe(TOY, steps=2, grad_clip=1.0)
    trainer = Trainer(recipe, registry, stream=io.StringIO())
    declared = set(vars(trainer))
    with pytest.raises(RuntimeError, match=r"train_step\(\) before Trainer.setup\(\)"):
        trainer.train_step()
    trainer.run()
    assert set(vars(trainer)) == declared, sorted(set(vars(trainer)) - declared)
    assert not hasattr(trainer, "prepare") and not hasattr(trainer, "_prepare")  # a bool beside a method: gone
