"""Which timed iterations ran on an undisturbed machine, and why the others did not.

A comparison of the calibrated prediction with the run means something only if the run and its
calibration saw the machine the calibration describes. On a shared or virtual machine three things
break that, and each has its own detector here; an iteration fails if any fires, and the report
says which:

* **cores taken** (``cores``): other processes' CPU time over the round (host busy time minus the
  ranks' own, from ``/proc/stat``), more than ``QUIET_CORES`` cores on average. Coarse: the kernel
  counts it in 10 ms ticks and it covers calibration, link timing and the run together.
* **waits for a core** (``waited``): how long the rank's compute thread was runnable but not
  running, during the run iteration and during its calibration replay (``/proc/thread-self/schedstat``,
  nanoseconds), beyond the CPU time the rank's own other threads (gloo's) took in that phase, more
  than ``QUIET_WAIT`` of that phase's wall time on any rank. This is the direct measure of the
  disturbance: each rank has a core of its own, so its compute thread waits only when something
  else holds that core, and what its own threads ran there is the rank's communication, in the
  calibration as in the run (on a quiet VM the compute thread's waits matched its gloo threads' CPU
  time within a few per cent, for both runtimes; torch's runtime keeps them 2-4 times busier). A background load far below ``QUIET_CORES`` (10 ms every 100 ms,
  about 0.1 core) passes the first test, yet each burst delays one rank by a few ms at a random
  moment of the schedule; the other rank then waits for it, which the calibration, whose ops
  wait for nothing, cannot show: the measured bubble comes out larger than predicted (1-15 points
  on the tiny plans under 1-2 busy cores) while the iteration time hardly moves. That was the CI failure.
* **hidden slow-downs** (``speed``): the VM's steal time (``/proc/stat``, any tick during the
  round), and for what no counter shows (a busy SMT sibling or neighbour VM, a frequency change),
  each rank's summed op time in the run and in the calibration replay compared with their medians
  over the run's undisturbed iterations: off by more than ``QUIET_SPEED``, that round ran on a
  different machine than the others. Calibration is averaged over all kept rounds, so a round
  that ran at another speed skews the prediction as well as the measurement.

Nothing here reads the prediction: iterations are judged by the machine's counters and their own
op times, never by how well they match the simulator.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

# Other processes' CPU over a whole round, in cores (tick-counted, hence loose).
QUIET_CORES = 0.3
# A rank's compute thread may wait this share of a phase's wall time for a core beyond what its own
# other threads ran (gloo's, 1-2 % of a phase with pipeplan's runtime, 3-10 % with torch's); any
# load from another process seen here cost 15-230 ms per phase.
QUIET_WAIT = 0.03
# A rank's summed op time may differ this much from the run's median (run and calibration apart).
QUIET_SPEED = 0.05
# The speed test needs a median to compare with: at least this many iterations passing the others.
SPEED_QUORUM = 3

# One rank's figures for one round, in the order all-gathered between ranks.
FIELDS = ("host", "busy", "own", "wall", "steal", "run_wall", "run_wait", "run_ops", "calib_wall",
          "calib_wait", "calib_ops", "run_others", "calib_others")


@dataclass(frozen=True)
class Round:
    """One timed round (calibration replay, link timing, run iteration) as every rank saw it."""

    foreign_cores: float
    steal: float
    run_wait: tuple[float, ...]  # per rank: seconds its threads waited for a core during the run
    run_wall: tuple[float, ...]
    run_ops: tuple[float, ...]  # per rank: summed op time of the run iteration
    calib_wait: tuple[float, ...]
    calib_wall: tuple[float, ...]
    calib_ops: tuple[float, ...]
    # per rank: CPU seconds its other threads (gloo's) ran during the run / the calibration replay
    run_others: tuple[float, ...] = ()
    calib_others: tuple[float, ...] = ()

    @staticmethod
    def from_rows(rows: list[list[float]], foreign_cores: float) -> "Round":
        """``rows``: per rank, the ``FIELDS`` values."""
        col = {name: tuple(r[k] for r in rows) for k, name in enumerate(FIELDS)}
        return Round(foreign_cores, max(col["steal"]), col["run_wait"], col["run_wall"], col["run_ops"],
                     col["calib_wait"], col["calib_wall"], col["calib_ops"], col["run_others"], col["calib_others"])

    def to_dict(self) -> dict:
        return {"foreign_cores": self.foreign_cores, "steal": self.steal, "run_wait": list(self.run_wait),
                "calib_wait": list(self.calib_wait), "run_ops": list(self.run_ops),
                "calib_ops": list(self.calib_ops), "run_others": list(self.run_others),
                "calib_others": list(self.calib_others)}


def _direct(r: Round) -> str | None:
    """What the counters say about round ``r`` alone; None when nothing fired."""
    if r.foreign_cores > QUIET_CORES:
        return f"cores: other processes used {r.foreign_cores:.2f} cores"
    if r.steal > 0:
        return f"speed: the hypervisor stole {1e3 * r.steal:.0f} ms"
    for phase, waits, walls, others in (("run", r.run_wait, r.run_wall, r.run_others),
                                        ("calibration", r.calib_wait, r.calib_wall, r.calib_others)):
        for rank, (wait, wall) in enumerate(zip(waits, walls)):
            own = others[rank] if others else 0.0
            if wall > 0 and wait - own > QUIET_WAIT * wall:
                return (f"waited: rank {rank} waited {1e3 * wait:.1f} ms for a core in a {1e3 * wall:.0f} ms {phase}"
                        + (f", its own threads ran {1e3 * own:.1f} ms" if own else ""))
    return None


def judge(rounds: list[Round]) -> list[str | None]:
    """Per round, why it was disturbed (``"<detector>: <figures>"``) or None if it was not."""
    reasons = [_direct(r) for r in rounds]
    clean = [r for r, why in zip(rounds, reasons) if why is None]
    if len(clean) < SPEED_QUORUM:
        return reasons
    for field, phase in (("run_ops", "run"), ("calib_ops", "calibration")):
        ranks = len(getattr(clean[0], field))
        medians = [statistics.median(getattr(r, field)[k] for r in clean) for k in range(ranks)]
        for i, r in enumerate(rounds):
            if reasons[i] is not None:
                continue
            for rank, (value, median) in enumerate(zip(getattr(r, field), medians)):
                if median > 0 and abs(value / median - 1) > QUIET_SPEED:
                    reasons[i] = (f"speed: rank {rank}'s ops took {100 * (value / median - 1):+.1f} % against the "
                                  f"run's median in the {phase}")
                    break
    return reasons


def too_disturbed(reasons: list[str | None], needed: int) -> bool:
    """Whether a run's comparison rests on a disturbed machine: fewer than ``needed`` rounds passed the
    detectors, or more rounds failed them than passed. Each detector fires on a threshold, so where most
    rounds crossed one, the same load at a smaller dose most likely sat below it in the rest (on a busy CI
    machine a dp = 2 run whose 5 passing rounds came out of 12 missed its calibration by 6 points of bubble)."""
    passed = reasons.count(None)
    return passed < needed or passed < len(reasons) - passed


def summary(reasons: list[str | None]) -> str:
    """One line: how many rounds each detector left out, with the worst figures of the first."""
    left = [why for why in reasons if why]
    if not left:
        return ""
    counts: dict[str, list[str]] = {}
    for why in left:
        counts.setdefault(why.split(":", 1)[0], []).append(why.split(":", 1)[1].strip())
    parts = [f"{len(v)} x {k} (e.g. {v[0]})" for k, v in sorted(counts.items(), key=lambda kv: -len(kv[1]))]
    return f"{len(left)} of {len(reasons)} iterations disturbed: " + "; ".join(parts)
