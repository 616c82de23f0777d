"""Signals to a live `pipeplan validate`: whatever ends the launcher ends torchrun and every rank, within 10 s,
and leaves no report and no temp folder. The CLI runs as a subprocess in this test's process group; the pids
(launcher, torchrun agent, ranks) are read from /proc's parent links before the signal, the run's TMPDIR is
the test's own empty folder. Each case starts torchrun and two ranks of the tiny plan (a few seconds)."""
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from pipeplan.validation import ValidateOptions, ValidationFailed, launch, run_validation  # noqa: E402
from validator.runtime import FAULT_ENV  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "validation" / "plans" / "tiny-1f1b-p2.json"
ENDS_WITHIN_S = 10.0
STARTS_WITHIN_S = 90.0  # two ranks importing torch on a loaded 2-core machine


def children_of() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            found.setdefault(parent, []).append(int(entry))
    return found


def tree(root: int) -> list[int]:
    """``root`` and every process below it, by parent links."""
    kids, found, todo = children_of(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, []))
    return found


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def torch_loaded(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as handle:
            return "libtorch" in handle.read()
    except OSError:
        return False


def started_by(launcher: int) -> list[int]:
    """Running processes whose environment names ``launcher`` as theirs (torchrun and the ranks inherit
    PIPEPLAN_LAUNCHER_PID): found however late they started, whoever their parent is now."""
    mark = f"PIPEPLAN_LAUNCHER_PID={launcher}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if mark in handle.read().split(b"\0") and running(int(entry)):
                        found.append(int(entry))
            except OSError:
                continue
    return found


class Run:
    """``pipeplan validate`` of the tiny plan, long enough (200 iterations) to be running when signalled."""

    def __init__(self, tmp_path: Path) -> None:
        self.temp = tmp_path / "tmp"
        self.temp.mkdir()
        self.report = tmp_path / "report.json"
        env = {"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(self.temp)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeplan", "validate", str(PLAN), "--iterations", "200", "--warmup", "1",
             "--timeout", "120", "--out", str(self.report)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=False)

    def wait_for(self, stage: str) -> tuple[int, dict[int, int]]:
        """(torchrun's pid, rank -> pid) once the run reached ``stage``: "agent" (torchrun started),
        "ranks" (both ranks left their pid notes, before importing torch) or "torch" (both loaded it)."""
        deadline = time.monotonic() + STARTS_WITHIN_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()
            agents = children_of().get(self.proc.pid, [])
            ranks = {}
            for note in self.temp.glob("pipeplan-validate-*/rank*.pid"):
                try:
                    ranks[int(note.name[4:-4])] = json.loads(note.read_text())["pid"]
                except (OSError, KeyError, ValueError):
                    pass
            if len(agents) == 1 and (stage == "agent" or (
                    len(ranks) == 2 and set(ranks.values()) <= set(tree(agents[0]))
                    and (stage == "ranks" or all(torch_loaded(p) for p in ranks.values())))):
                return agents[0], ranks
            time.sleep(0.01)
        self.proc.kill()
        raise AssertionError(f"the run did not reach {stage!r} within {STARTS_WITHIN_S:g} s: {self.proc.communicate()}")

    def ended(self) -> tuple[int, str]:
        """(exit code, stderr) of the launcher, which must end within ENDS_WITHIN_S."""
        try:
            _, err = self.proc.communicate(timeout=ENDS_WITHIN_S)
        except subprocess.TimeoutExpired:
            for pid in tree(self.proc.pid):
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"pipeplan validate still ran {ENDS_WITHIN_S:g} s after the signal")
        return self.proc.returncode, err


def assert_nothing_left(run: Run, pids: list[int], err: str, ranks_seen: bool = True) -> None:
    assert len(pids) >= (4 if ranks_seen else 2), pids  # launcher, torchrun (and two ranks)
    assert not [p for p in pids if running(p)], f"still running: {[p for p in pids if running(p)]}"
    assert started_by(run.proc.pid) == []
    assert not run.report.exists()
    assert list(run.temp.iterdir()) == []
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("signum,stage", [
    (signal.SIGTERM, "torch"), (signal.SIGHUP, "torch"),
    (signal.SIGINT, "ranks"),  # as the ranks start, before they import torch
    (signal.SIGTERM, "agent"),  # while torchrun starts: ranks may be forked after the launcher looked
])
def test_a_stop_signal_to_the_launcher_ends_every_process_it_started(tmp_path, signum, stage):
    run = Run(tmp_path)
    run.wait_for(stage)
    pids = tree(run.proc.pid)
    run.proc.send_signal(signum)
    code, err = run.ended()
    assert code == 128 + signum, err
    assert err.startswith(f"pipeplan validate: stopped by {signal.Signals(signum).name}"), err
    assert_nothing_left(run, pids, err, ranks_seen=stage != "agent")


def test_sigkill_of_one_rank_names_that_rank(tmp_path):
    run = Run(tmp_path)
    _, ranks = run.wait_for("torch")
    pids = tree(run.proc.pid)
    os.kill(ranks[1], signal.SIGKILL)
    code, err = run.ended()
    assert code == 1, err
    assert err.strip() == "pipeplan validate: rank 1 failed: killed by SIGKILL"
    assert_nothing_left(run, pids, err)


def test_sigkill_of_the_torchrun_agent_names_the_agent(tmp_path):
    run = Run(tmp_path)
    agent, _ = run.wait_for("torch")
    pids = tree(run.proc.pid)
    os.kill(agent, signal.SIGKILL)
    code, err = run.ended()
    assert code == 1, err
    assert err.startswith(f"pipeplan validate: the torchrun agent (pid {agent}) was killed by SIGKILL"), err
    assert "rank" not in err.split(";")[0]
    assert_nothing_left(run, pids, err)


def test_sigkill_of_the_launcher_takes_torchrun_and_the_ranks_with_it(tmp_path):
    """No clean-up runs after a SIGKILL: the parent-death signals end torchrun and the ranks; the run folder
    (which also holds torch's temp folders) is all that stays."""
    run = Run(tmp_path)
    run.wait_for("torch")
    pids = tree(run.proc.pid)
    run.proc.kill()
    run.proc.communicate()
    deadline = time.monotonic() + ENDS_WITHIN_S
    while any(running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if running(p)] and started_by(run.proc.pid) == []
    assert not run.report.exists()
    assert [p.name[:len("pipeplan-validate-")] for p in run.temp.iterdir()] == ["pipeplan-validate-"]


def test_a_taken_master_port_is_retried_on_another(tmp_path, monkeypatch):
    """A port taken between free_port() and torchrun's bind: torchrun fails (EADDRINUSE, before any rank
    starts) and the launcher starts it again on a new port. There the ranks meet through the master port
    and run ops: rank 1's injected fault at its first op is what ends the run (kept short that way)."""
    monkeypatch.setenv(FAULT_ENV, "1:0:raise")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        given, real_free_port = [], launch.free_port

        def free_port():
            given.append(real_free_port() if given else taken)
            return given[-1]

        monkeypatch.setattr(launch, "free_port", free_port)
        with pytest.raises(ValidationFailed) as failure:
            run_validation(str(PLAN), ValidateOptions(iterations=1, warmup=0, timeout=120))
    assert given[0] == taken and len(given) == 2 and given[1] != taken
    assert str(failure.value).startswith("rank 1 failed: RuntimeError: injected fault at op 0"), failure.value


def _bind(port: int) -> list[str]:
    """What torchrun does first with its master port (bind, listen), in a process of its own."""
    return [sys.executable, "-c", f"import socket; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()"]


def test_a_master_port_taken_every_time_gives_up_after_three_tries(tmp_path, monkeypatch):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        tries = []
        monkeypatch.setattr(launch, "free_port", lambda: tries.append(taken) or taken)
        monkeypatch.setattr(launch, "validator_command", lambda plan, nproc, port, options, run_dir: _bind(port))
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        with pytest.raises(ValidationFailed) as failure:
            run_validation(str(PLAN), ValidateOptions(timeout=60))
    assert len(tries) == launch.PORT_TRIES == 3
    assert str(failure.value).startswith(f"torchrun could not bind its master port: ports {taken}, {taken}, {taken}")
    assert list(tmp_path.iterdir()) == []


def test_a_child_whose_parent_died_before_it_armed_the_parent_death_signal_exits_at_once():
    """The check after PR_SET_PDEATHSIG: a child whose parent is not the expected one runs nothing."""
    from pipeplan.validation.processes import arm_parent_death

    armed = functools.partial(arm_parent_death, os.getpid())
    ok = subprocess.run(["echo", "ran"], preexec_fn=armed, capture_output=True, text=True)
    orphan = subprocess.run(["echo", "ran"], preexec_fn=functools.partial(arm_parent_death, 1),
                            capture_output=True, text=True)
    assert (ok.returncode, ok.stdout) == (0, "ran\n")
    assert (orphan.returncode, orphan.stdout) == (1, "")


@pytest.mark.parametrize("launcher,runs", [("this test's parent", True), ("this test", False)])
def test_a_rank_whose_torchrun_is_not_the_launchers_child_exits_before_anything(tmp_path, launcher, runs):
    """A rank's parent (torchrun) must be the launcher's child once the rank has armed its signal. Here the
    rank's parent is this test: given this test's parent as the launcher the rank goes on (and leaves its
    pid note; it then refuses to run as one rank of a 2-device plan), given this test it exits at once."""
    pid = os.getppid() if runs else os.getpid()
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PIPEPLAN_LAUNCHER_PID": str(pid)}
    out = subprocess.run([sys.executable, "-m", "validator", str(PLAN), "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    if runs:  # it refuses its input in one line, exit 2, as the CLI does: a lone rank is not a 2-device run
        assert out.returncode == 2 and (tmp_path / "rank0.pid").is_file()
        assert out.stderr.count("\n") == 1 and "torchrun started 1 ranks" in out.stderr
    else:
        assert out.returncode == 1
        assert out.stderr == "" and list(tmp_path.iterdir()) == []  # not even its pid note


# torchrun 2.13's own words, captured from runs on this machine.
TORCHRUN_PORT_TAKEN = ("torch.distributed.DistNetworkError: The server socket has failed to listen on any local network "
                       "address. port: 50811, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use")
TORCHRUN_SIGTERM = ("    raise SignalException(f\"Process {os.getpid()} got signal: {sigval}\", sigval=sigval)\n"
                    "torch.distributed.elastic.multiprocessing.api.SignalException: Process 32250 got signal: 15")


def test_torchrun_reports_are_read_as_a_taken_port_or_a_stopped_agent(tmp_path):
    from pipeplan.validation.failure import failure_reason, master_port_taken

    assert master_port_taken(TORCHRUN_PORT_TAKEN, 1, ranks_started=False)
    assert not master_port_taken(TORCHRUN_PORT_TAKEN, 1, ranks_started=True)  # then a rank's own failure
    assert not master_port_taken(TORCHRUN_SIGTERM, 1, ranks_started=False)
    assert failure_reason(tmp_path, TORCHRUN_SIGTERM, 1, agent_pid=32250) == (
        "the torchrun agent (pid 32250) was stopped by SIGTERM and stopped its ranks (no rank reported an error)")
    assert failure_reason(tmp_path, "", -9, agent_pid=7).startswith("the torchrun agent (pid 7) was killed by SIGKILL")
