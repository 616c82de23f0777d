"""One rank of a validation run; start it through torchrun, one process per GPU of the plan (tp·pp·dp).

    python -m torch.distributed.run --nproc-per-node 2 -m validator PLAN.json --out report.json

(``pipeplan validate`` builds that command with ``--measurements``, picks a free port and watches
it.) Every rank builds its stages, calibrates them and its links, runs the schedule ``--warmup`` +
``--iterations`` times, and sends its timings to rank 0. Once that distributed part is over, rank 0
saves the measurements (``--measurements``) and, with ``--out``, builds the report from them and
writes it. If anything fails the rank prints ``rank k failed: <reason>``, leaves a note in
``--run-dir`` for the launcher, and exits non-zero.
"""
from __future__ import annotations

import argparse
import ctypes
import faulthandler
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

# Nothing here imports torch (or pipeplan) at module level: a rank arms PR_SET_PDEATHSIG, then reads its
# options and records its pid, before the seconds torch takes to import, so a launcher that kills
# torchrun meanwhile leaves nothing behind.


_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out", "timed out")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, "ValidateOptions"]:
    """The plan, the output flags and the run's options (``ValidateOptions``, rank form)."""
    from pipeplan.errors import SpecError
    from pipeplan.validation.options import RANK, ValidateOptions

    p = argparse.ArgumentParser(prog="python -m validator", description=__doc__.split("\n\n")[0])
    p.add_argument("plan", help="plan JSON")
    ValidateOptions.add_arguments(p, RANK)
    p.add_argument("--out", help="report JSON, built and written by rank 0 after the run")
    p.add_argument("--measurements", help="the run's measurements as JSON, written by rank 0 (pipeplan validate "
                   "builds the report from them)")
    p.add_argument("--run-dir", help="folder for the launcher: pid, done and failure notes per rank")
    args = p.parse_args(argv)
    try:
        return args, ValidateOptions.from_args(args)
    except SpecError as err:
        p.error(str(err))


# The launcher's pid (``pipeplan.validation.processes.LAUNCHER_PID_ENV``; not imported from there:
# importing pipeplan takes most of a second, and this runs before anything slow).
LAUNCHER_PID_ENV = "PIPEPLAN_LAUNCHER_PID"


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this rank when torchrun goes away, so a killed launcher leaves no orphans.

    Started by ``pipeplan validate`` (``PIPEPLAN_LAUNCHER_PID`` set), the rank then checks that its
    parent is still the launcher's torchrun: if torchrun died before the request was made, the rank
    has been handed to another parent, would never be signalled, and exits at once.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    if launcher.isdigit() and _parent_of(os.getppid()) != int(launcher):
        os._exit(1)


def _note(run_dir: str | None, name: str, data: dict) -> None:
    if not run_dir:
        return
    path = Path(run_dir) / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    # First, before anything slow is imported: die with torchrun (see the note at the top).
    _die_with_parent()
    # The launcher sends SIGUSR1 before killing a run that outlived its timeout: every thread's
    # Python stack then goes to stderr, so a hang names where it hung.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    rank = int(os.environ.get("RANK", "0"))
    args, options = parse_args(argv)
    _note(args.run_dir, f"rank{rank}.pid", {"rank": rank, "pid": os.getpid()})
    try:
        from .run import run_rank

        measurements = run_rank(args.plan, options, rank)
        if measurements is not None:  # rank 0, the distributed part over
            if args.measurements:
                measurements.save(args.measurements)
            if args.out:
                from pipeplan.validation.report import build_report, write_report

                write_report(build_report(measurements), args.out)
    except BaseException as err:  # every failure becomes one line and a non-zero exit
        if isinstance(err, SystemExit) and not err.code:
            raise
        from pipeplan.errors import SpecError

        refused = isinstance(err, SpecError)  # bad input (a flag, the plan, this host): exit 2, as the CLI's
        runtime = sys.modules.get(f"{__package__}.runtime")  # not imported if torch itself failed to import
        PeerFailure = runtime.PeerFailure if runtime is not None else ()
        peer = err.peer if isinstance(err, PeerFailure) else None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # A backend error about a lost connection is the other side's failure, wherever it surfaced.
        lost = isinstance(err, PeerFailure) or any(s in reason for s in _PEER_SIGNS)
        if not isinstance(err, (PeerFailure, KeyboardInterrupt)):
            reason = f"{type(err).__name__}: {reason}"
        _note(args.run_dir, f"rank{rank}.failed", {
            "rank": rank, "reason": reason, "peer": peer, "kind": "peer" if lost else "own",
            "time": time.time(), "traceback": traceback.format_exc(limit=8),
        })
        if refused:
            print(f"python -m validator: error: {str(err).strip()}", file=sys.stderr, flush=True)
        else:
            print(f"rank {rank} failed: {reason}", file=sys.stderr, flush=True)
        # Skip interpreter teardown: destroying a process group whose peer is gone can block.
        os._exit(2 if refused else 1)
    _note(args.run_dir, f"rank{rank}.done", {"rank": rank, "time": time.time()})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
