"""The teacher reuses the student's data exactly when both enable the same data plugin with the same config
(compared as resolved configs, every default filled in: engine.load_recipe)."""

import pytest

from engine import open_run
from engine.testing import train

DATA = {"num_train": 400, "num_test": 100, "batch_size": 50}
TEACHER = ["mnist1d", "cnn1d", "adamw", "cross_entropy"]
STUDENT = ["mnist1d", "mlp", "adamw", "cross_entropy", "teacher", "kd"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hookmix_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOOKMIX_CACHE", str(cache))
        out = str(tmp_path_factory.mktemp("teacher") / "run")
        train(TEACHER, {"mnist1d": DATA, "cnn1d": {"channels": 4}}, steps=2, out=out, threads=1)
        yield out


def _reused(teacher_dir, data: dict) -> bool:
    student = train(STUDENT, {"mnist1d": data, "teacher": {"run": teacher_dir}}, steps=1, threads=1)
    teacher = student.plugins["teacher"]
    return teacher._student_data_if_same(student.state, open_run(teacher_dir), "mnist1d") is student.state.data


def test_the_same_data_config_is_reused_a_different_one_is_not(teacher_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HOOKMIX_CACHE", str(tmp_path))
    assert _reused(teacher_dir, DATA)
    assert _reused(teacher_dir, {**DATA, "seed": 42})  # the default, written out: the same resolved config
    assert not _reused(teacher_dir, {**DATA, "batch_size": 25})
