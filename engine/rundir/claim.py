"""Claiming a run directory before a run writes to it.

``open_location`` checks what can be checked without writing: the fsspec backend of the URL is
installed and writable, and a local ``--out`` is not a file or a dangling link. ``Claim.take``
then creates the directory and takes its lock (which also proves it writable), and, under the
lock, decides what the directory may be used for:

- fresh run: an empty or new directory; a directory holding a run that died before its first
  checkpoint (a recipe, no checkpoint) is started again in place, the failed attempt's files
  moved to ``failed-attempts/N/`` (said in a note); a run with checkpoints or a non-empty
  directory that is not a run is refused;
- resume: a run with a checkpoint; without one it starts again from step 0, as above.

A directory it will use is checked for names taken by the wrong kind of entry (a file named
``recipe-history``, a folder named ``summary.json``): one line naming it and the fix for the
command (a fresh run: another ``--out``; a resume: move it away and resume again), instead of a
write failing later. Numbered entries (``failed-attempts/N``, ``recipe-history/NNN-...``) count on
from the highest number present and never replace an existing entry.

Leftover ``.tmp-*`` files of a write interrupted by a kill are removed under the lock (no live
writer can own them then). If setup fails after the claim, ``release(failed=True)`` removes the
lock and the directory it created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib

from engine.errors import BadInput
from engine.rundir import checkpoint
from engine.rundir.directory import RunDir
from engine.rundir.lock import NAME as LOCK_NAME
from engine.rundir.lock import RunLock, again, write_error

RUN_FILES = ("recipe.toml", "metrics.jsonl", "summary.json", "tensorboard")  # what a failed attempt leaves
_DIRS = ("checkpoints", "tensorboard", "recipe-history", "failed-attempts")  # what the run keeps as folders
_FILES = ("recipe.toml", "metrics.jsonl", "summary.json")  # and as files
_NUMBERED = re.compile(r"(\d+)(-|$)")  # failed-attempts/N, recipe-history/NNN-until-step-S.toml
_READ_ONLY = {"http", "https", "github", "zip", "tar", "hf", "data"}


def note(text: str) -> None:
    print(f"hookmix: note: {text}", file=sys.stderr)


def open_location(url: str) -> RunDir:
    """The run directory at ``url``, or bad input naming the URL and the fix; writes nothing."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in _READ_ONLY:
        raise BadInput(
            f"run directory {url}: {protocol}:// is read-only; pass a local path or a writable URL "
            f"(e.g. s3://, gs:// with their fsspec packages)"
        )
    try:
        run_dir = RunDir(url)
    except ImportError as exc:
        raise BadInput(
            f"run directory {url}: the fsspec backend for {protocol}:// is not installed "
            f"({str(exc).splitlines()[0] if str(exc) else 'ImportError'}); install it or pass a local path"
        ) from None
    except ValueError as exc:
        raise BadInput(f"run directory {url}: {exc}; pass a local path or an fsspec URL") from None
    if run_dir.is_local:
        path = run_dir.path
        if os.path.islink(path) and not os.path.exists(path):
            raise BadInput(
                f"run directory {url} is a symbolic link to {os.readlink(path)}, which does not exist; "
                f"create its target or pass another --out"
            )
        if os.path.exists(path) and not os.path.isdir(path):
            raise BadInput(f"run directory {url} is a file; pass a directory (new or a hookmix run)")
        parent = os.path.dirname(os.path.abspath(path))
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.path.isdir(parent):
            raise BadInput(f"run directory {url}: {parent} is a file, not a directory; pass another --out")
    return run_dir


def warn_if_ephemeral(run_dir: RunDir) -> None:
    """Said once the run has started (a refusal stays one line)."""
    if run_dir.url().startswith("memory://"):
        note(f"run directory {run_dir.url()} lives in this process's memory; its outputs vanish when it exits")


class Claim:
    """The lock on one run directory, and what the directory holds."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self.lock = RunLock(run_dir)
        self.created: str | None = None  # the topmost local directory this claim created

    def take(self, resume: bool) -> bool:
        """Lock the directory; return whether to resume from a checkpoint (False: start at step 0)."""
        self._makedirs(resume)
        self.lock.acquire(resume)
        try:
            self._remove_temporaries()
            holds_run, has_checkpoint = self.check(resume)
            if holds_run and not has_checkpoint:  # died before its first checkpoint: nothing to resume or protect
                self._keep_failed_attempt(resume)
            return holds_run and has_checkpoint
        except BaseException:
            self.release(failed=True)
            raise

    def check(self, resume: bool) -> tuple[bool, bool]:
        """What :meth:`take` refuses, found without locking or writing (also ``--nproc``'s pre-flight).

        Returns (the directory holds a run, it has a checkpoint).
        """
        run_dir = self.run_dir
        holds_run = run_dir.exists("recipe.toml")
        has_checkpoint = bool(checkpoint.list_steps(run_dir))
        if holds_run and has_checkpoint and not resume:
            raise BadInput(
                f"run directory {run_dir.url()} already holds a run; pass --out NEW_DIR, or --resume {run_dir.url()}"
            )
        if holds_run:
            self._check_layout(resume)
            return holds_run, has_checkpoint
        others = [n for n in run_dir.list("") if n != LOCK_NAME and not n.startswith(".tmp-")]
        if others:
            raise BadInput(
                f"run directory {run_dir.url()} is not empty and holds no hookmix run "
                f"({others[0]}, ...); pass a new or empty directory as --out"
            )
        return False, False

    def _check_layout(self, resume: bool) -> None:
        """Bad input when a name the run writes is taken by the wrong kind of entry (a file where a
        folder belongs, or the reverse): found now, under the lock, not as a failed write mid-run."""
        run_dir = self.run_dir
        for name in _DIRS:
            if run_dir.exists(name) and not run_dir.isdir(name):
                raise BadInput(
                    f"run directory {run_dir.url()}: {run_dir.url(name)} is a file where hookmix keeps "
                    f"its {name}/ directory; move the file away, {again(run_dir.url(), resume)}"
                )
        for name in _FILES:
            if run_dir.isdir(name):
                raise BadInput(
                    f"run directory {run_dir.url()}: {run_dir.url(name)} is a directory where hookmix "
                    f"writes its {name} file; move the directory away, {again(run_dir.url(), resume)}"
                )

    def _makedirs(self, resume: bool) -> None:
        run_dir = self.run_dir
        if run_dir.is_local:
            top = os.path.abspath(run_dir.path)
            while not os.path.exists(os.path.dirname(top)) and os.path.dirname(top) != top:
                top = os.path.dirname(top)
            if not os.path.exists(top):
                self.created = top
        try:
            run_dir.makedirs()
        except OSError as exc:
            raise write_error(run_dir.url(), exc, resume) from None

    def _remove_temporaries(self) -> None:
        removed = 0
        for sub in ("", "checkpoints", "recipe-history"):
            for name in self.run_dir.list(sub):
                if name.startswith(".tmp-"):
                    self.run_dir.remove(f"{sub}/{name}" if sub else name)
                    removed += 1
        if removed:
            note(f"removed {removed} temporary file(s) of a write interrupted in {self.run_dir.url()}")

    def _keep_failed_attempt(self, resume: bool) -> None:
        run_dir = self.run_dir
        n = next_number(run_dir.list("failed-attempts"))
        while run_dir.exists(f"failed-attempts/{n}"):  # never move into an earlier attempt's folder
            n += 1
        dest = f"failed-attempts/{n}"
        run_dir.makedirs(dest)
        for name in RUN_FILES:
            if run_dir.exists(name):
                run_dir.move(name, f"{dest}/{name}")
        how = "its recipe" if resume else "this recipe"
        note(
            f"{run_dir.url()} holds a run that stopped before its first checkpoint; starting again from step 0 "
            f"with {how} (the failed attempt's files are kept in {run_dir.url(dest)})"
        )

    def release(self, failed: bool = False) -> None:
        """Drop the lock; after a failed setup also remove the directory this claim created."""
        self.lock.release()
        if failed and self.created is not None:
            try:
                _remove_empty_tree(self.created)
            except OSError:
                pass
            self.created = None


def _remove_empty_tree(top: str) -> None:
    for root, dirs, files in os.walk(top, topdown=False):
        if not files and not os.listdir(root):
            os.rmdir(root)


def _flat(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def record_recipe_change(run_dir: RunDir, new_text: str, step: int) -> None:
    """On resume, before ``recipe.toml`` is replaced: keep the previous recipe if the new one differs.

    ``recipe.toml`` always holds the recipe the next ``--resume`` runs; ``recipe-history/NNN-until-
    step-SSSSSSSS.toml`` holds each earlier one and the step up to which it trained, so the run
    directory alone says which recipe produced every step.
    """
    if not run_dir.exists("recipe.toml"):
        return
    old_text = run_dir.read_text("recipe.toml")
    old, new = _flat(tomllib.loads(old_text)), _flat(tomllib.loads(new_text))
    for flat in (old, new):
        flat.pop("run.out", None)  # the same directory may be named differently (relative, absolute)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if not changed:
        return
    name = f"recipe-history/{next_number(run_dir.list('recipe-history')):03d}-until-step-{step:08d}.toml"
    run_dir.write_text_new(name, old_text)  # exclusive: an earlier recipe is never replaced
    shown = ", ".join(f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in changed[:3])
    note(
        f"recipe changed on resume at step {step} ({shown}{', ...' if len(changed) > 3 else ''}); "
        f"the previous recipe is kept as {run_dir.url(name)}"
    )


def next_number(names: list[str]) -> int:
    """One more than the highest number that starts a name (1 for none); other names are not hookmix's
    and are ignored. Counting the names instead would reuse a number after one was deleted."""
    numbers = [int(m.group(1)) for name in names if (m := _NUMBERED.match(name))]
    return max(numbers, default=0) + 1


def check_claimable(run_dir: RunDir, resume: bool) -> None:
    """What :meth:`Claim.take` would refuse, checked without writing or locking (``--nproc``'s pre-flight)."""
    if run_dir.exists(""):
        Claim(run_dir).check(resume)
