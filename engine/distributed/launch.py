"""The command line's side of distributed runs: ``hookmix train --nproc N``, elastic restarts, crash reports.

Nothing here launches processes itself: torchrun (``torch.distributed.run``) is the launcher and
elastic agent; :func:`launch` runs the same command under it.
"""

from __future__ import annotations

from engine.distributed.env import rank_prefix, read_env
from engine.errors import BadInput

_LAUNCH = {
    "--nproc": "--nproc-per-node",
    "--nnodes": "--nnodes",
    "--node-rank": "--node-rank",
    "--rdzv-endpoint": "--rdzv-endpoint",
    "--max-restarts": "--max-restarts",
}


def add_launch_arguments(p) -> None:
    p.add_argument(
        "--nproc",
        type=int,
        default=0,
        metavar="N",
        help="start N processes on this node through torch.distributed.run (torchrun)",
    )
    p.add_argument("--nnodes", type=int, default=1, help="torchrun: number of nodes (multi-node: with --rdzv-endpoint)")
    p.add_argument("--node-rank", type=int, default=0, help="torchrun: this node's rank")
    p.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT", help="torchrun: c10d rendezvous address")
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="torchrun: restarts of the worker group on a failure (each resumes from the last checkpoint)",
    )


def launch(args) -> int:
    """``hookmix train ... --nproc N``: the same command under ``torch.distributed.run`` (the elastic agent).

    Exit code: 2 when the first worker to fail exited 2 (bad input), 1 for any other failure.
    """
    import time
    from pathlib import Path

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if args.nproc < 1:
        raise BadInput(f"--nproc {args.nproc}: give the number of processes on this node (>= 1)")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise BadInput("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    rest, skip = [], False
    for a in args.argv:  # the train command without the launcher's own options
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0]
        if flag in _LAUNCH:
            skip = "=" not in a
            continue
        rest.append(a)
    if not args.out and not args.resume and not any(o.startswith("run.out=") for o in args.overrides):
        rest += ["--out", f"runs/{Path(args.recipe or 'run').stem}-{time.strftime('%Y%m%d-%H%M%S')}"]
    launcher = ["--nproc-per-node", str(args.nproc), "--max-restarts", str(args.max_restarts)]
    if args.nnodes > 1 or args.rdzv_endpoint:
        launcher += [
            "--nnodes",
            str(args.nnodes),
            "--node-rank",
            str(args.node_rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            args.rdzv_endpoint,
        ]
    else:
        launcher += ["--standalone"]
    try:
        torchrun.main([*launcher, "-m", "engine.cli", *rest])
    except ChildFailedError as exc:  # the agent stops the others (SIGTERM) once one fails: use the first
        _, first = exc.get_first_failure()
        return 2 if first.exitcode == 2 else 1
    return 0


def elastic_resume(out: str, resume: bool) -> tuple[bool, bool]:
    """(resume, restart) for a worker: after an elastic restart (TORCHELASTIC_RESTART_COUNT > 0) the run
    directory is the resume key: resume from its last checkpoint, or start over when it has none yet."""
    if resume or not out or read_env().restart_count == 0:
        return resume, False
    from engine.rundir import checkpoint
    from engine.rundir.directory import RunDir

    return bool(checkpoint.list_steps(RunDir(out))), True


def report_crash(exc: BaseException) -> int:
    """An unexpected exception in a distributed worker: the traceback, then one line naming the rank.

    torchrun interleaves every worker's stderr; the last line says which rank failed first and why.
    """
    import sys
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    text = str(exc).splitlines()[0] if str(exc) else ""
    print(f"hookmix: error: {rank_prefix() or 'rank 0: '}{type(exc).__name__}: {text}", file=sys.stderr)
    return 1
