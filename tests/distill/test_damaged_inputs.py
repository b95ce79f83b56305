"""Damaged CIFAR-100 inputs and a logit_std without a consumer: one line, exit 2, nothing written."""

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from engine.cli.main import main
from plugins.cifar.cifar100 import write_synthetic_cifar100


def _tar_with(path: Path, members: dict) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def _refusal(argv: list[str], out: Path, capsys) -> str:
    """Run the CLI in process; check the bad-input promise; return the one stderr line."""
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
    return err.strip()


def _cifar_damage(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "cifar-100-python.tar.gz"
    if kind == "not_a_tar":
        path.write_bytes(b"definitely not a tar archive\n" * 100)
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "gzip_of_garbage":
        path.write_bytes(gzip.compress(b"\x01garbage" * 1000))
    elif kind == "truncated_archive":
        write_synthetic_cifar100(str(path), n_train=8, n_test=4)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "member_not_a_pickle":
        _tar_with(path, {"train": b"not a pickle at all", "test": b"\x80\x02garbage"})
    elif kind == "member_truncated_pickle":
        write_synthetic_cifar100(str(tmp_path / "whole"), n_train=8, n_test=4, archive=False)
        whole = tmp_path / "whole"
        train = next(p for p in whole.rglob("train"))
        _tar_with(path, {"train": train.read_bytes()[:50], "test": train.read_bytes()[:50]})
    elif kind == "folder_with_garbage_member":
        folder = tmp_path / "cifar-100-python"
        folder.mkdir()
        (folder / "train").write_bytes(b"garbage")
        (folder / "test").write_bytes(b"garbage")
        return folder
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "not_a_tar",
        "empty_file",
        "gzip_of_garbage",
        "truncated_archive",
        "member_not_a_pickle",
        "member_truncated_pickle",
        "folder_with_garbage_member",
    ],
)
def test_damaged_cifar100_path_is_one_line(kind, tmp_path, capsys):
    path = _cifar_damage(tmp_path, kind)
    line = _refusal(["train", "cifar100-r32x4", f"plugins.cifar100.path={path}"], tmp_path / "run", capsys)
    assert line.startswith("hookmix: error: plugins.cifar100"), line
    assert str(path) in line, line  # names the file the user has to replace
    print(line)


def test_logit_std_without_a_distillation_loss_is_bad_input(tmp_path, capsys):
    line = _refusal(["train", "mnist1d-mlp", "run.plugins+=logit_std"], tmp_path / "run", capsys)
    assert "logit_std" in line and "loss:distillation" in line and "run.plugins+=kd" in line


def test_logit_std_with_a_self_distillation_consumer_is_accepted(tmp_path, capsys, monkeypatch):
    """uskd reads distillation-kind logits without a teacher: logit_std has a consumer there."""
    monkeypatch.setenv("HOOKMIX_CACHE", str(tmp_path / "cache"))
    code = main(
        [
            "train",
            "mnist1d-student-uskd",
            "run.plugins+=logit_std",
            "run.steps=1",
            "--quiet",
            "plugins.mnist1d.num_train=200",
            "plugins.mnist1d.num_test=100",
            "plugins.mnist1d.batch_size=10",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0, capsys.readouterr().err
