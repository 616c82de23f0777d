"""``pipeplan validate``: run a plan for real and compare the measurement with the predictions.

Three numbers for each of bubble fraction, iteration time and per-device busy time:

* measured  — the median of the timed iterations of the real run (``python -m validator``);
* predicted — the simulator fed the run's own calibration (per-stage op times, link ping-pongs):
  what pipeplan claims once it knows the machine;
* apriori   — the simulator with the analytic cost model and the cluster spec, no measurement.

Errors: bubble in percentage points (predicted - measured), iteration time in per cent of measured.

The launcher starts torchrun in its own session with a free port and a run folder where each rank
leaves its pid and, on failure, a note naming the reason and the peer it was waiting for. On any
failure or when ``timeout`` passes it kills torchrun's process group and every rank it knows of,
then names the rank that failed first. Nothing here imports torch.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.timeline import Timeline, bubble_fraction, busy_time, iteration_time

from .api import simulate
from .errors import SpecError
from .fileio import load_mapping, write_json_atomic
from .specs import resolve
from .plan import Plan

REPORT_KIND = "pipeplan.validation"
REPORT_VERSION = 1


class ValidationFailed(RuntimeError):
    """The real run did not complete; the message says which rank failed and why.

    ``pids``: the launcher's and the ranks' process ids, all gone by the time this is raised.
    """

    def __init__(self, message: str, pids: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.pids = pids


@dataclass(frozen=True)
class ValidateOptions:
    backend: str = "gloo"
    device: str = "cpu"
    iterations: int = 10
    warmup: int = 3
    timeout: float = 300.0
    scale: float = 1.0
    calibration_reps: int = 1
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("gloo", "nccl"):
            raise SpecError(f"--backend: choose gloo or nccl (got {self.backend!r})")
        if self.device not in ("cpu", "cuda"):
            raise SpecError(f"--device: choose cpu or cuda (got {self.device!r})")
        if self.backend == "nccl" and self.device != "cuda":
            raise SpecError("--backend nccl: NCCL moves GPU tensors only; add --device cuda or use gloo")
        for name in ("iterations", "calibration_reps"):
            if getattr(self, name) < 1:
                raise SpecError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.warmup < 0:
            raise SpecError("--warmup: must be >= 0")
        if not self.timeout > 0:
            raise SpecError("--timeout: must be > 0 seconds")
        if not 0 < self.scale <= 1:
            raise SpecError(f"--scale: must be in (0, 1] (got {self.scale})")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise SpecError(f"--threads: must be a positive integer (got {self.threads!r}); leave it out for cores / ranks")

    @property
    def wait_timeout(self) -> float:
        """How long one rank waits on another before giving up: a third of the whole run's budget
        (at most a minute), so a dead or hung rank is reported well inside ``timeout``."""
        return max(2.0, min(60.0, self.timeout / 3))


# ---------------------------------------------------------------------------------------------- report


def _section(timeline: Timeline, **extra: Any) -> dict[str, Any]:
    total = iteration_time(timeline)
    busy = busy_time(timeline)
    return {
        "bubble_fraction": bubble_fraction(timeline),
        "iteration_time": total,
        "busy_time": busy,
        "device_bubble_fraction": [1 - b / total if total > 0 else 0.0 for b in busy],
        **extra,
        "timeline": timeline.to_dict(),
    }


def measured_section(iterations: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the timed iterations; the timeline shown is the iteration closest to the median time."""
    timelines = [Timeline.from_dict(t) for t in iterations]
    times = [iteration_time(t) for t in timelines]
    bubbles = [bubble_fraction(t) for t in timelines]
    median_time = statistics.median(times)
    shown = min(range(len(timelines)), key=lambda k: abs(times[k] - median_time))
    section = _section(timelines[shown], shown_iteration=shown)
    p = timelines[0].num_devices
    section.update(
        bubble_fraction=statistics.median(bubbles),
        iteration_time=median_time,
        busy_time=[statistics.median(busy_time(t)[d] for t in timelines) for d in range(p)],
        iterations=[{"iteration_time": t, "bubble_fraction": b, "foreign_cores": tl.meta.get("foreign_cores")}
                    for t, b, tl in zip(times, bubbles, timelines)],
    )
    section["device_bubble_fraction"] = [1 - b / median_time for b in section["busy_time"]]
    return section


def errors(prediction: dict[str, Any], measured: dict[str, Any]) -> dict[str, float]:
    return {
        "bubble_points": 100 * (prediction["bubble_fraction"] - measured["bubble_fraction"]),
        "iteration_time_pct": 100 * (prediction["iteration_time"] - measured["iteration_time"]) / measured["iteration_time"],
    }


def predictions(plan: Plan, base_dir: str | Path, profile: dict[str, Any]) -> tuple[dict, dict]:
    """(calibrated, a-priori) prediction sections for ``plan``, with the current simulator."""
    calibrated = simulate(plan=plan, base_dir=base_dir, profile=profile)
    apriori = simulate(plan=plan, base_dir=base_dir)
    for result, label in ((calibrated, "predicted (calibrated)"), (apriori, "a priori")):
        result.timeline.meta["source"] = label
    return _section(calibrated.timeline), _section(apriori.timeline)


def build_report(run: dict[str, Any]) -> dict[str, Any]:
    """The report of a finished run (``run`` is what rank 0 of the validator assembled)."""
    plan = Plan.from_dict(run["plan"])
    measured = measured_section(run["measured_iterations"])
    predicted, apriori = predictions(plan, run["base_dir"], run["profile"])
    return {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "plan": run["plan"],
        "run": {k: run[k] for k in ("plan_file", "base_dir", "scale", "backend", "device", "dtype", "threads_per_rank",
                                    "world_size", "iterations", "iterations_tried", "disturbed", "warmup", "calibration_reps",
                                    "clock_offsets")},
        "measured": measured,
        "predicted": predicted,
        "apriori": apriori,
        "errors": {"predicted": errors(predicted, measured), "apriori": errors(apriori, measured)},
        "profile": run["profile"],
        "measured_iterations": run["measured_iterations"],
        "losses": run["losses"],
    }


def repredict(report: dict[str, Any], base_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Errors of today's simulator against a stored run (its calibration and measurement).

    ``base_dir``: where the plan's relative cluster/model files are (default: the run's plan folder).
    """
    plan = Plan.from_dict(report["plan"])
    measured = measured_section(report["measured_iterations"])
    predicted, apriori = predictions(plan, base_dir or report["run"]["base_dir"], report["profile"])
    return {"predicted": errors(predicted, measured), "apriori": errors(apriori, measured)}


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    write_json_atomic(path, report)


def load_report(path: str) -> dict[str, Any]:
    data = load_mapping(path, "report")
    if data.get("kind") != REPORT_KIND or not all(k in data for k in ("measured", "predicted", "apriori")):
        raise SpecError(f"report: {path!r} is not a validation report (written by `pipeplan validate --out`)")
    return data


# -------------------------------------------------------------------------------------------- launcher


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def validator_command(plan_path: str, nproc: int, port: int, options: ValidateOptions, out: str,
                      run_dir: str) -> list[str]:
    """The torchrun command line for one node with ``nproc`` ranks (see the README for several nodes)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(port), "--max-restarts", "0",
        "-m", "validator", str(plan_path), "--backend", options.backend, "--device", options.device,
        "--iterations", str(options.iterations), "--warmup", str(options.warmup),
        "--timeout", f"{options.wait_timeout:g}", "--scale", f"{options.scale:g}",
        "--calibration-reps", str(options.calibration_reps), "--out", str(out), "--run-dir", str(run_dir),
    ]
    if options.threads:
        cmd += ["--threads", str(options.threads)]
    return cmd


def _code_root() -> str:
    """The folder holding pipeplan/, simulator/ and validator/, so the ranks import this same code."""
    return str(Path(__file__).resolve().parents[1])


def _alive(pid: int) -> bool:
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
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
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
    """Run ``plan_path`` for real on this machine (one rank per pipeline device) and return the report.

    Raises ``ValidationFailed`` with "rank k failed: <reason>" if a rank fails, and after
    ``options.timeout`` seconds at the latest; no rank outlives this call.
    """
    plan = Plan.load(plan_path)
    if plan.pp < 1:
        raise SpecError("plan.pp: must be at least 1")
    # Model, cluster and schedule as the ranks will load them: a missing spec file or a plan that does
    # not match its model is a one-line error here, before any process starts.
    resolve(plan.model, plan.cluster, plan, Path(plan_path).resolve().parent)
    with tempfile.TemporaryDirectory(prefix="pipeplan-validate-") as tmp:
        run_dir = Path(tmp)
        target = out or str(run_dir / "report.json")
        if out:
            folder = Path(out).parent if str(Path(out).parent) else Path(".")
            if not folder.is_dir():
                raise SpecError(f"--out: folder {str(folder)!r} does not exist")
        cmd = validator_command(plan_path, plan.pp, free_port(), options, str(Path(target).resolve()), str(run_dir))
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
            if _alive(pid):
                _kill_all(proc, run_dir)
                break
        _wait_gone(pids)
        if timed_out is None and proc.returncode == 0 and Path(target).is_file():
            return load_report(target)
        log = os.environ.get("PIPEPLAN_VALIDATE_LOG")
        if log:  # the ranks' whole output, for post-mortems
            Path(log).write_text(output)
        raise ValidationFailed(failure_reason(run_dir, output, proc.returncode, timed_out), (proc.pid, *pids))
