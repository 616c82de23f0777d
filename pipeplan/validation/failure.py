"""Reading a failed run: which process failed first and why, in one line; a master port already taken.

The sources, most specific first: the torchrun agent itself ended by a signal from outside (killed:
nobody was left to report a rank; SIGTERM and the like: it stopped the ranks itself); a rank's own error note (it raised); a rank killed by a signal the launcher did not
send (torchrun's summary of exit codes; torchrun stops the others with SIGTERM); the peer another
rank was left waiting for; the launcher's own timeout; and last torchrun's exit code and output tail.
"""
from __future__ import annotations

import json
import re
import signal
from pathlib import Path

_EXIT_RE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")
# torchrun's TCPStore server failing to bind its --master-port: "... port: 29500, useIpv6: false,
# code: -98, name: EADDRINUSE, message: address already in use" (torch 2.13).
_PORT_TAKEN_RE = re.compile(r"EADDRINUSE|address already in use", re.IGNORECASE)
# torchrun turns SIGTERM, SIGINT, SIGHUP and SIGQUIT into this exception, stops its ranks and exits 1.
_AGENT_SIGNALLED_RE = re.compile(r"SignalException: Process (\d+) got signal: (\d+)")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def master_port_taken(output: str, returncode: int | None, ranks_started: bool) -> bool:
    """Whether torchrun stopped because another process took its master port before it could bind it
    (between ``free_port`` and torchrun's start): it fails before starting any rank, saying so."""
    return returncode not in (0, None) and not ranks_started and bool(_PORT_TAKEN_RE.search(output))


def _notes(run_dir: Path) -> list[dict]:
    notes = []
    for path in run_dir.glob("rank*.failed"):
        try:
            notes.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(notes, key=lambda n: n.get("time", 0))


def failure_reason(run_dir: Path, output: str, returncode: int | None, timed_out: float | None = None,
                   agent_pid: int | None = None) -> str:
    """One line naming the process that failed first and why.

    ``returncode`` is torchrun's; negative when a signal ended it. The launcher kills torchrun only
    after a timeout (``timed_out``) or a signal of its own, so a signal death otherwise came from
    outside, and the ranks then died with the agent (their parent-death signal), not of their own.
    A signal torchrun handles (SIGTERM, SIGINT, SIGHUP) it reports in its output before it exits.
    """
    pid = f" (pid {agent_pid})" if agent_pid is not None else ""
    if timed_out is None and returncode is not None and returncode < 0:
        return (f"the torchrun agent{pid} was killed by {signal_name(-returncode)}; its ranks were ended "
                "with it (no rank reported an error)")
    stopped = _AGENT_SIGNALLED_RE.search(output)
    if timed_out is None and stopped and (agent_pid is None or int(stopped.group(1)) == agent_pid):
        return (f"the torchrun agent{pid} was stopped by {signal_name(int(stopped.group(2)))} and stopped "
                "its ranks (no rank reported an error)")
    notes = _notes(run_dir)
    own = [n for n in notes if n.get("kind") == "own"]
    if own:
        return f"rank {own[0]['rank']} failed: {own[0]['reason']}"
    exits = {int(r): int(c) for r, c in _EXIT_RE.findall(output)}
    for rank, code in sorted(exits.items()):
        if code < 0 and -code != signal.SIGTERM:
            return f"rank {rank} failed: killed by {signal_name(-code)}"
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
