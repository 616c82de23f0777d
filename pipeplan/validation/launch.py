"""Run a plan for real: start torchrun with one rank per pipeline device, watch it, build the report.

The launcher checks everything it can first (``preflight``), then starts torchrun in its own session
with a free master port, a run folder (also the run's TMPDIR, so torch's own temp folders go there)
where each rank leaves its pid and, on failure, a note naming the reason and the peer it was waiting
for; rank 0 leaves the run's measurements there. A port another process took before torchrun bound
it is retried on a new one (``PORT_TRIES``). On any failure, when ``timeout`` passes or when the
launcher receives SIGTERM, SIGHUP or SIGINT (``stopping``) it kills torchrun's process group and
every rank (``processes``), waits until they are gone and removes the run folder; a signal then
leaves as ``Stopped``, a failure as ``ValidationFailed`` naming the process that failed first. On
success it builds the report from the measurements in this process. Nothing here imports torch.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..fileio import jsonable
from .failure import failure_reason, master_port_taken
from .measurements import Measurements
from .options import ValidateOptions
from .preflight import preflight
from .processes import LAUNCHER_PID_ENV, arm_parent_death, drain, end_run, process_alive, rank_pids, wait_gone
from .report import build_report, write_report
from .stopping import SignalGuard, stop_on_signals

MEASUREMENTS_FILE = "measurements.json"
# torchrun fails at once when its master port was taken after free_port() let it go; a new port is
# tried this many times in all.
PORT_TRIES = 3
# After a kill, how long to read what is left of torchrun's output: a process that escaped the kill
# may hold the pipe open. A stop signal gets the shorter wait: the user asked to end now.
PIPE_GRACE_S = 10.0
STOP_GRACE_S = 2.0


class ValidationFailed(RuntimeError):
    """The real run did not complete; the message says which process failed first and why.

    ``pids``: the torchrun agent's and the ranks' process ids, all gone by the time this is raised.
    """

    def __init__(self, message: str, pids: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.pids = pids


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def validator_command(plan_path: str, nproc: int, port: int, options: ValidateOptions, run_dir: str) -> list[str]:
    """The torchrun command line for one node with ``nproc`` ranks (see the README for several nodes);
    rank 0 saves the measurements in ``run_dir``."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(port), "--max-restarts", "0",
        "-m", "validator", str(plan_path), *options.to_argv(),
        "--measurements", str(Path(run_dir) / MEASUREMENTS_FILE), "--run-dir", str(run_dir),
    ]


def _code_root() -> str:
    """The folder holding pipeplan/, simulator/ and validator/, so the ranks import this same code."""
    return str(Path(__file__).resolve().parents[2])


def _environment(run_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_code_root(), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TMPDIR"] = str(run_dir)  # torchrun's and torch's temp folders go with the run folder
    env[LAUNCHER_PID_ENV] = str(os.getpid())
    return env


@dataclass(frozen=True)
class Attempt:
    """One torchrun run to its end: its output, exit code, pid, the ranks' pids, and the timeout if it hit it."""

    output: str
    returncode: int | None
    agent_pid: int
    rank_pids: tuple[int, ...]
    timed_out: float | None


def _run_torchrun(cmd: list[str], env: dict[str, str], run_dir: Path, timeout: float, budget: float,
                  guard: SignalGuard) -> Attempt:
    """Start torchrun and wait for it, ``timeout`` seconds at most (``budget``: the whole run's, for the
    message); whatever ends the wait, no process of the run is left when this returns or raises."""
    proc = None
    try:
        with guard.deferred():  # a signal during the start is raised once ``proc`` can be killed
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    text=True, env=env, start_new_session=True,
                                    preexec_fn=partial(arm_parent_death, os.getpid()))
        timed_out = None
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = budget
            for pid in rank_pids(run_dir).values():  # ask for Python stacks first (see validator)
                try:
                    os.kill(pid, signal.SIGUSR1)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(1.0)
            end_run(proc, run_dir)
            output = drain(proc, PIPE_GRACE_S)
    except BaseException:
        if proc is not None:
            with guard.deferred():  # clean-up is not cut short by a second signal
                killed = end_run(proc, run_dir)
                drain(proc, STOP_GRACE_S)
                wait_gone(killed + list(rank_pids(run_dir).values()))
        raise
    pids = list(rank_pids(run_dir).values())
    if any(process_alive(p) for p in pids):  # torchrun stops its ranks on the way out; make sure
        end_run(proc, run_dir)
    wait_gone(pids)
    return Attempt(output, proc.returncode, proc.pid, tuple(pids), timed_out)


def _remove(folder: Path) -> None:
    for _ in range(3):  # a process killed a moment ago may still have been writing into it
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.2)


def run_validation(plan_path: str, options: ValidateOptions, out: str | None = None) -> dict[str, Any]:
    """Run ``plan_path`` for real on this machine (one rank per pipeline device) and return the report,
    also written to ``out`` when given.

    Refuses with ``SpecError`` before starting anything what cannot run (``preflight``). Raises
    ``ValidationFailed`` with "rank k failed: <reason>" (or naming the torchrun agent) if the run
    fails, and after ``options.timeout`` seconds at the latest; ``Stopped`` on SIGTERM, SIGHUP or
    SIGINT. No process of the run outlives this call, and its run folder is removed; the report is
    written only after a complete run. The report (two simulations) is built after the ranks are
    gone, outside the time budget.
    """
    with stop_on_signals() as guard:
        checked = preflight(plan_path, options, out)  # a signal here also ends the CUDA probe it may run
        run_dir = None
        try:
            with guard.deferred():  # a signal during the creation is raised once the folder can be removed
                run_dir = Path(tempfile.mkdtemp(prefix="pipeplan-validate-"))
            env = _environment(run_dir)
            deadline = time.monotonic() + options.timeout
            taken: list[int] = []
            while True:
                port = free_port()
                attempt = _run_torchrun(validator_command(plan_path, checked.plan.num_gpus, port, options, str(run_dir)),
                                        env, run_dir, max(0.1, deadline - time.monotonic()), options.timeout, guard)
                if not master_port_taken(attempt.output, attempt.returncode, bool(attempt.rank_pids)):
                    break
                taken.append(port)
                if len(taken) == PORT_TRIES:
                    raise ValidationFailed(
                        f"torchrun could not bind its master port: ports {', '.join(map(str, taken))} were each taken "
                        f"by another process before it started ({PORT_TRIES} tries); free some ports and run again",
                        (attempt.agent_pid,))
            measurements = run_dir / MEASUREMENTS_FILE
            if attempt.timed_out is None and attempt.returncode == 0 and measurements.is_file():
                report = build_report(Measurements.load(measurements))
            else:
                log = os.environ.get("PIPEPLAN_VALIDATE_LOG")
                if log:  # the ranks' whole output, for post-mortems
                    Path(log).write_text(attempt.output)
                raise ValidationFailed(failure_reason(run_dir, attempt.output, attempt.returncode,
                                                      attempt.timed_out, attempt.agent_pid),
                                       (attempt.agent_pid, *attempt.rank_pids))
        finally:
            if run_dir is not None:
                with guard.deferred():
                    _remove(run_dir)
        # The run is over and its folder gone; a signal up to here leaves no report.
        if out:
            write_report(report, out)
        # As JSON, so the caller gets what --out holds.
        return json.loads(json.dumps(jsonable(report)))
