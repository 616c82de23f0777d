"""The processes of one validation run: the torchrun agent, its ranks, and how they all end.

Three mechanisms make sure nothing outlives the launcher, whatever ends it:

* the launcher kills torchrun's process group and every rank it can find, the ranks found both from
  the pid notes they leave in the run folder and from the process table (``/proc``: a rank that has
  not written its note yet), before it returns or re-raises;
* torchrun is started with ``PR_SET_PDEATHSIG`` = SIGKILL (``arm_parent_death``), so a launcher
  killed with SIGKILL, which runs no clean-up, takes torchrun with it;
* each rank arms the same for itself first thing (``validator.__main__``), so torchrun's death takes
  the ranks. Both check their parent after arming: a parent that died just before is not signalled.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The launcher's pid, for the ranks: a rank's parent (torchrun) must still be the launcher's child
# once the rank has armed its parent-death signal (validator.__main__).
LAUNCHER_PID_ENV = "PIPEPLAN_LAUNCHER_PID"
# How long the launcher waits for killed processes to be gone before it removes the run folder.
GONE_LIMIT_S = 5.0


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


def parent_pids() -> dict[int, int]:
    """Every visible process and its parent, from ``/proc/*/stat`` (empty where there is no /proc)."""
    found = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                # The command name (field 2) may hold spaces and parentheses: split after the last ")".
                found[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children, ...), from the process table now."""
    children: dict[int, list[int]] = {}
    for child, parent in parent_pids().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def rank_pids(run_dir: Path) -> dict[int, int]:
    """Rank -> pid, from the notes the ranks leave in the run folder."""
    pids = {}
    for path in run_dir.glob("rank*.pid"):
        try:
            note = json.loads(path.read_text())
            pids[int(note["rank"])] = int(note["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return pids


def end_run(proc: subprocess.Popen, run_dir: Path) -> list[int]:
    """SIGKILL torchrun's process group, every process below torchrun and every rank that left a pid
    note (ranks run in sessions of their own, so the group kill alone would miss them). Returns the
    pids signalled. The process table is read before the kill: once torchrun is gone its ranks are
    no longer its children."""
    below = descendants(proc.pid) if proc.poll() is None else []
    targets = sorted(set(below) | set(rank_pids(run_dir).values()))
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return targets


def wait_gone(pids: list[int], limit: float = GONE_LIMIT_S) -> list[int]:
    """Wait up to ``limit`` seconds for ``pids`` to end; returns those still running."""
    deadline = time.monotonic() + limit
    while True:
        alive = [p for p in pids if process_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def drain(proc: subprocess.Popen, grace: float) -> str:
    """The rest of a killed torchrun's output, waiting at most ``grace`` seconds on the pipe (a process
    that escaped the kill may hold it open); torchrun itself is reaped either way."""
    try:
        output, _ = proc.communicate(timeout=grace)
        return output or ""
    except subprocess.TimeoutExpired as err:
        partial = err.output or ""
        proc.stdout.close()
        proc.wait()
        return partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    except ValueError:  # the pipe was already closed by an earlier, interrupted drain
        proc.wait()
        return ""


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def arm_parent_death(expected_parent: int) -> None:
    """In a child between fork and exec (``Popen(preexec_fn=...)``): be SIGKILLed when the parent dies.

    The setting survives exec. If the parent ``expected_parent`` died before it was armed, the child
    now has another parent and would never be signalled, so it exits at once (Linux only; elsewhere
    this does nothing and the launcher's own clean-up is what remains).
    """
    prctl = _prctl()
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != expected_parent:
        os._exit(1)
