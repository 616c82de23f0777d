"""Run a plan for real: start torchrun with one rank per pipeline device, watch it, build the report.

The launcher starts torchrun in its own session with a free port and a run folder where each rank
leaves its pid and, on failure, a note naming the reason and the peer it was waiting for; rank 0
leaves the run's measurements there. On any failure or when ``timeout`` passes it kills torchrun's
process group and every rank it knows of, then names the rank that failed first. On success it
builds the report from the measurements in this process. Nothing here imports torch.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulator.kinds import COMPOSITE_KINDS, COMPUTE_KINDS

from ..errors import SpecError
from ..plan import Plan
from ..specs import resolve
from .measurements import Measurements
from .options import ValidateOptions
from .report import build_report, load_report, write_report

MEASUREMENTS_FILE = "measurements.json"


class ValidationFailed(RuntimeError):
    """The real run did not complete; the message says which rank failed and why.

    ``pids``: the launcher's and the ranks' process ids, all gone by the time this is raised.
    """

    def __init__(self, message: str, pids: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.pids = pids


# -------------------------------------------------------------------------------------------- launcher


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


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; it only waits for its parent to reap it
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _rank_pids(run_dir: Path) -> dict[int, int]:
    pids = {}
    for path in run_dir.glob("rank*.pid"):
        try:
            note = json.loads(path.read_text())
            pids[int(note["rank"])] = int(note["pid"])
        except (OSError, ValueError, KeyError):
            continue
    return pids


def _kill_all(proc: subprocess.Popen, run_dir: Path) -> None:
    """SIGKILL torchrun's process group and every rank that recorded its pid (ranks run in sessions of
    their own, so the group kill alone would miss them)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in _rank_pids(run_dir).values():
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pids: list[int], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


# After the kill, how long to read what is left of the output: a rank that had not yet recorded its pid
# (still importing torch, in a session of its own) may hold the pipe open after torchrun is gone.
PIPE_GRACE_S = 10.0


def _drain(proc: subprocess.Popen) -> str:
    """The rest of a killed torchrun's output, waiting at most ``PIPE_GRACE_S`` on the pipe."""
    try:
        output, _ = proc.communicate(timeout=PIPE_GRACE_S)
        return output or ""
    except subprocess.TimeoutExpired as err:
        partial = err.output or ""
        proc.stdout.close()
        proc.wait()
        return partial.decode(errors="replace") if isinstance(partial, bytes) else partial


_EXIT_RE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")


def failure_reason(run_dir: Path, output: str, returncode: int | None, timed_out: float | None = None) -> str:
    """One line naming the rank that failed first and why.

    A rank's own error (it raised) comes first; then a rank killed by a signal the launcher did not
    send (torchrun stops the others with SIGTERM); then the peer another rank was left waiting for.
    """
    notes = []
    for path in run_dir.glob("rank*.failed"):
        try:
            notes.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    notes.sort(key=lambda n: n.get("time", 0))
    own = [n for n in notes if n.get("kind") == "own"]
    if own:
        return f"rank {own[0]['rank']} failed: {own[0]['reason']}"
    exits = {int(r): int(c) for r, c in _EXIT_RE.findall(output)}
    for rank, code in sorted(exits.items()):
        if code < 0 and -code != signal.SIGTERM:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"rank {rank} failed: killed by {name}"
    waiting = [n for n in notes if n.get("kind") == "peer"]
    if waiting:
        n = waiting[0]
        if n.get("peer") is not None:
            return f"rank {n['peer']} failed: stopped responding (rank {n['rank']}: {n['reason']})"
        return f"rank {n['rank']} failed: {n['reason']}"
    if timed_out is not None:
        return f"timed out after {timed_out:g} s and stopped every rank (no rank reported an error)"
    failed = [r for r, c in sorted(exits.items()) if c != 0]
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
    if failed:
        return f"rank {failed[0]} failed: exit code {exits[failed[0]]} ({tail})"
    return f"the validator exited with code {returncode}: {tail}"


def run_validation(plan_path: str, options: ValidateOptions, out: str | None = None) -> dict[str, Any]:
    """Run ``plan_path`` for real on this machine (one rank per pipeline device) and return the report,
    also written to ``out`` when given.

    Raises ``ValidationFailed`` with "rank k failed: <reason>" if a rank fails, and after
    ``options.timeout`` seconds at the latest; no rank outlives this call. The report (two
    simulations) is built after the ranks are gone, outside that budget.
    """
    plan = Plan.load(plan_path)
    if plan.pp < 1:
        raise SpecError("plan.pp: must be at least 1")
    # Model, cluster and schedule as the ranks will load them: a missing spec file or a plan that does
    # not match its model is a one-line error here, before any process starts.
    if plan.tp > 1 or plan.dp > 1 or plan.blocking_p2p:
        raise SpecError(f"plan: the validator runs one pipeline replica with overlapping sends (tp = 1, dp = 1, "
                        f"blocking_p2p false); this plan has tp = {plan.tp}, dp = {plan.dp}, blocking_p2p = "
                        f"{str(plan.blocking_p2p).lower()}")
    schedule = resolve(plan.model, plan.cluster, plan, Path(plan_path).resolve().parent).schedule
    # torch's runtime runs an overlapped pair's two parts one after the other (validator.torch_runtime).
    runs = set(COMPUTE_KINDS) | (set(COMPOSITE_KINDS) if options.runtime == "torch" else set())
    not_run = sorted(schedule.kinds_present - runs)
    if not_run:
        torch_runs = " or validate with --runtime torch" if set(not_run) <= set(COMPOSITE_KINDS) else ""
        raise SpecError(f"plan.schedule_csv: the validator runs F, B, I and W actions only; remove the "
                        f"{', '.join(not_run)} actions to validate the pipeline (the simulator prices them){torch_runs}")
    if "selective" in plan.recompute:
        raise SpecError("plan.recompute: the validator runs none or full recomputation, not selective (the simulator prices it)")
    if out:
        folder = Path(out).parent if str(Path(out).parent) else Path(".")
        if not folder.is_dir():
            raise SpecError(f"--out: folder {str(folder)!r} does not exist")
    with tempfile.TemporaryDirectory(prefix="pipeplan-validate-") as tmp:
        run_dir = Path(tmp)
        cmd = validator_command(plan_path, plan.pp, free_port(), options, str(run_dir))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_code_root(), *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        timed_out = None
        try:
            output, _ = proc.communicate(timeout=options.timeout)
        except subprocess.TimeoutExpired:
            timed_out = options.timeout
            for pid in _rank_pids(run_dir).values():  # ask for Python stacks first (see validator)
                try:
                    os.kill(pid, signal.SIGUSR1)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(1.0)
            _kill_all(proc, run_dir)
            output = _drain(proc)
        except BaseException:
            _kill_all(proc, run_dir)
            _drain(proc)
            raise
        finally:
            pids = list(_rank_pids(run_dir).values())
        # torchrun stops its ranks on the way out; make sure, whatever happened.
        for pid in pids:
            if process_alive(pid):
                _kill_all(proc, run_dir)
                break
        _wait_gone(pids)
        measurements = run_dir / MEASUREMENTS_FILE
        if timed_out is None and proc.returncode == 0 and measurements.is_file():
            # Written and read back as JSON, so the caller gets what --out holds.
            target = out or str(run_dir / "report.json")
            write_report(build_report(Measurements.load(measurements)), target)
            return load_report(target)
        log = os.environ.get("PIPEPLAN_VALIDATE_LOG")
        if log:  # the ranks' whole output, for post-mortems
            Path(log).write_text(output)
        raise ValidationFailed(failure_reason(run_dir, output, proc.returncode, timed_out), (proc.pid, *pids))
