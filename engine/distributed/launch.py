"""The command line's side of distributed runs: ``hookmix train --nproc N``, its checks, and what it says.

torchrun (``torch.distributed.run``) is the launcher and elastic agent; :func:`launch` runs the same
``train`` command under it, after checking everything that can be checked in one process:

1. its own arguments and the environment (one line each, exit 2, nothing launched);
2. the recipe and the run directory, exactly as a one-process run checks them (a refused command is
   refused before any worker starts, so no restart can retry it);
3. then torchrun, with the workers' last lines collected in a directory of the launch
   (``HOOKMIX_LAUNCH_DIR``): the launcher prints *one* of them (the refusing rank's, the first failure's,
   rank 0's on a signal) instead of every rank's plus torchrun's log. A worker that refused (exit 2)
   leaves ``refused`` there: a restarted attempt of the same launch exits 2 at once, doing nothing.

Fresh run or resume is decided once per launch (engine/distributed/group.py ``Group.claimed``): a
restarted worker group resumes only a run directory that an earlier attempt of the same launch claimed.
"""

from __future__ import annotations

import os
import sys

from engine.distributed.env import rank_prefix
from engine.errors import BadInput, HookmixError

_LAUNCH = {"--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-timeout", "--max-restarts"}
LAUNCH_DIR = "HOOKMIX_LAUNCH_DIR"  # set by the launcher for its workers: where each leaves its last line
RDZV_TIMEOUT = 300  # seconds a multi-node launch waits for every node (torchrun's own default is 600)


def add_launch_arguments(p) -> None:
    p.add_argument(
        "--nproc", type=int, metavar="N", help="start N processes on this node through torch.distributed.run"
    )
    p.add_argument("--nnodes", type=int, default=1, help="torchrun: number of nodes (multi-node: with --rdzv-endpoint)")
    p.add_argument("--node-rank", type=int, default=0, help="torchrun: this node's rank")
    p.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT", help="torchrun: c10d rendezvous address")
    p.add_argument(
        "--rdzv-timeout",
        type=float,
        default=RDZV_TIMEOUT,
        metavar="SECONDS",
        help=f"multi-node: how long to wait for every node to join before failing (default {RDZV_TIMEOUT})",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="torchrun: restarts of the worker group on a failure (each resumes from the last checkpoint)",
    )


def wants_launch(args) -> bool:
    """Whether ``train`` runs under the launcher (any launcher option given)."""
    return args.nproc is not None or args.nnodes != 1 or bool(args.rdzv_endpoint)


def check_arguments(args) -> None:
    """The launcher's options, before anything is imported or started; bad input names the option."""
    if args.nproc is None or args.nproc < 1:
        raise BadInput(f"--nproc {args.nproc}: give the number of processes on this node (a whole number >= 1)")
    if args.nnodes < 1:
        raise BadInput(f"--nnodes {args.nnodes}: give the number of nodes (a whole number >= 1)")
    if not 0 <= args.node_rank < args.nnodes:
        raise BadInput(f"--node-rank {args.node_rank} is not in 0..{args.nnodes - 1} (--nnodes {args.nnodes})")
    if args.max_restarts < 0:
        raise BadInput(f"--max-restarts {args.max_restarts}: give a whole number >= 0 (0: no restarts)")
    if not args.rdzv_timeout > 0 or args.rdzv_timeout != args.rdzv_timeout:
        raise BadInput(f"--rdzv-timeout {args.rdzv_timeout}: give seconds > 0")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise BadInput("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    if args.rdzv_endpoint:
        host, _, port = args.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadInput(
                f"--rdzv-endpoint {args.rdzv_endpoint!r} is not HOST:PORT with a port in 1..65535 "
                f"(e.g. 10.0.0.1:29500, the same on every node)"
            )
    if "RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        raise BadInput(
            "hookmix train --nproc starts torchrun itself, but this process already runs under a launcher "
            "(RANK or TORCHELASTIC_RUN_ID is set); drop --nproc, or unset those variables"
        )


def worker_argv(args) -> list[str]:
    """The ``train`` command each worker runs: the user's, without the launcher's own options."""
    rest, skip = [], False
    for a in args.argv:
        if skip:
            skip = False
            continue
        flag = a.split("=", 1)[0]
        if flag in _LAUNCH:
            skip = "=" not in a
            continue
        rest.append(a)
    return rest


def check_run(args, out: str) -> None:
    """The recipe and the run directory, checked as the workers will check them (nothing is written)."""
    from engine.api import resolve_run
    from engine.rundir.claim import check_claimable, open_location

    overrides = list(args.overrides)
    if args.resume and args.recipe is not None:
        overrides.insert(0, args.recipe)
    if args.resume:
        resolve_run(None, overrides, resume=args.resume)
    else:
        resolve_run(args.recipe, overrides, out=out)
    check_claimable(open_location(args.resume or out), resume=bool(args.resume))


def launch(args) -> int:
    """``hookmix train ... --nproc N``: checked, then the same command under ``torch.distributed.run``.

    Exit code: 2 when a worker refused its input (bad input), 128 + signal number when the launcher
    was interrupted, 1 for any other failure; one line on stderr says which.
    """
    import shutil
    import tempfile
    import time
    from pathlib import Path

    from engine.failures import interrupts

    check_arguments(args)
    rest = worker_argv(args)
    out = args.resume or args.out or next((o.split("=", 1)[1] for o in args.overrides if o.startswith("run.out=")), "")
    if not out:  # every rank and every restart must agree on the directory: name it here, once
        out = f"runs/{Path(args.recipe or 'run').stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        rest += ["--out", out]
    check_run(args, out)
    interrupts.check()
    work = tempfile.mkdtemp(prefix="hookmix-launch-")
    try:
        return _run_torchrun(args, rest, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _torchrun_options(args) -> list[str]:
    options = ["--nproc-per-node", str(args.nproc), "--max-restarts", str(args.max_restarts)]
    if args.nnodes == 1 and not args.rdzv_endpoint:
        return [*options, "--standalone"]
    return [
        *options,
        *("--nnodes", str(args.nnodes), "--node-rank", str(args.node_rank)),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint),
        *("--rdzv-conf", f"join_timeout={args.rdzv_timeout:g}"),
    ]


def _run_torchrun(args, rest: list[str], work: str) -> int:
    import logging
    import signal

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    # the workers speak for themselves (the launcher prints one of their lines): torchrun's log is noise
    for name in list(logging.root.manager.loggerDict):  # torch sets each elastic logger's level itself
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its 4-line warning
    os.environ[LAUNCH_DIR] = work

    def stop(signum, frame):  # as torchrun's own handler: the agent stops the workers (they checkpoint)
        raise SignalException(f"got {signal.Signals(signum).name}", sigval=signal.Signals(signum))

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        torchrun.main([*_torchrun_options(args), "-m", "engine.cli", *rest])
    except ChildFailedError as exc:
        return _report_failure(exc, work)
    except SignalException as exc:
        return _report_signal(int(exc.sigval), work, args)
    except RendezvousError as exc:
        raise LaunchFailure(
            f"the nodes did not meet at {args.rdzv_endpoint} within --rdzv-timeout {args.rdzv_timeout:g} s "
            f"({type(exc).__name__}); start `hookmix train` with the same --rdzv-endpoint on all "
            f"{args.nnodes} nodes, or raise --rdzv-timeout"
        ) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.environ.pop(LAUNCH_DIR, None)
    return 0


class LaunchFailure(HookmixError):
    """The launch itself failed (no node met the others): exit 1, one line."""


def _lines(work: str) -> dict[int, tuple[int, str]]:
    """rank -> (exit code, last line) of every worker that left one."""
    out = {}
    for name in os.listdir(work):
        if name.startswith("rank-") and name.endswith(".txt"):
            with open(os.path.join(work, name), encoding="utf-8") as f:
                code, _, line = f.read().partition("\t")
            out[int(name[5:-4])] = (int(code), line.rstrip("\n"))
    return out


def _report_failure(exc, work: str) -> int:
    first_rank, first = exc.get_first_failure()
    lines = _lines(work)
    refused = sorted(r for r, (code, _) in lines.items() if code == 2)
    rank = refused[0] if refused else first.rank if first.rank in lines else min(lines, default=None)
    if rank is None:
        print(
            f"hookmix: error: rank {first.rank} exited with code {first.exitcode} before saying why "
            f"(killed? out of memory?); see the output above",
            file=sys.stderr,
        )
        return 1
    code, line = lines[rank]
    trace = os.path.join(work, f"rank-{rank}.traceback")
    if code == 1 and os.path.exists(trace):  # a crash: its traceback is part of the report
        with open(trace, encoding="utf-8") as f:
            print(f.read(), end="", file=sys.stderr)
    print(line, file=sys.stderr)
    return code if code in (2, 130, 143) else 1


def _report_signal(signum: int, work: str, args) -> int:
    import signal

    # the workers got the signal too: one that stopped for it says where (a peer that failed because
    # the others stopped first is not the story)
    stopped = sorted((r, line) for r, (code, line) in _lines(work).items() if code == 128 + signum)
    line = stopped[0][1] if stopped else ""
    if not line:
        name = signal.Signals(signum).name
        again = f"hookmix train --resume {args.resume or args.out or 'RUN_DIR'} --nproc {args.nproc}"
        line = f"hookmix: interrupted by {name}; the workers were stopped (a run keeps its last checkpoint: `{again}`)"
    print(line, file=sys.stderr)
    return 128 + signum


# --- the worker's side -----------------------------------------------------------------------------------


def refused_before() -> bool:
    """In a worker of a restarted launch: an earlier attempt refused its input, so this one does nothing."""
    work = os.environ.get(LAUNCH_DIR)
    return bool(work) and os.path.exists(os.path.join(work, "refused"))


def say(line: str, code: int) -> None:
    """The command's last line: on stderr, or, in a worker of ``hookmix train --nproc``, to the launcher."""
    work, rank = os.environ.get(LAUNCH_DIR), os.environ.get("RANK")
    if not work or rank is None or not os.path.isdir(work):
        print(line, file=sys.stderr)
        return
    tmp = os.path.join(work, f".rank-{rank}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{code}\t{line}\n")
    os.replace(tmp, os.path.join(work, f"rank-{rank}.txt"))
    if code == 2:
        open(os.path.join(work, "refused"), "a").close()


def report_crash(exc: BaseException) -> int:
    """An unexpected exception in a distributed worker: the traceback, then one line naming the rank.

    torchrun interleaves every worker's stderr; the last line says which rank failed first and why.
    """
    import traceback

    work, rank = os.environ.get(LAUNCH_DIR), os.environ.get("RANK")
    if work and rank is not None and os.path.isdir(work):  # the launcher prints it if this crash is the cause
        with open(os.path.join(work, f"rank-{rank}.traceback"), "w", encoding="utf-8") as f:
            traceback.print_exception(exc, file=f)
    else:
        traceback.print_exception(exc, file=sys.stderr)
    text = str(exc).splitlines()[0] if str(exc) else ""
    say(f"hookmix: error: {rank_prefix() or 'rank 0: '}{type(exc).__name__}: {text}", 1)
    return 1
