"""This machine as the probe sees it: its cores' peak, and whether a timed round ran undisturbed.

A round (one pass of a benchmark over its shapes) is judged by the counters ``validator/quiet.py``
uses for a validation run, read around the round by the thread that times it:

* the hypervisor's steal time (``/proc/stat``, all cores): more than ``QUIET_STEAL`` of the round's
  core-seconds (the validator leaves out a round at any tick; a probe round is a few hundred ms on a
  VM that steals a tick most seconds, so it allows a few ticks but not a burst);
* how long the timing thread was runnable but waited for its core (``/proc/thread-self/schedstat``,
  nanoseconds): more than ``QUIET_WAIT`` of the round's wall time means another process ran on the
  core the probe has pinned itself to.

Nothing here reads the timings themselves.

The peak (``core_peak_flops``) is an upper bound from ``/proc/cpuinfo``: the widest vector unit its
flags name (avx512f: 16 float32 lanes, avx/avx2: 8, else sse: 4) x 2 for a fused multiply-add x 2
FMA pipes (every x86 server core since Haswell and Zen 1 has two) x the highest clock the kernel
reports. A core that splits 512-bit ops in two halves (AMD Zen 4) reaches half of it at most; a
virtual machine may report its base clock (the TSC's) where the core boosts above it, which the
factor 2 of Zen 4's halves more than covers there.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

QUIET_STEAL = 0.02
QUIET_WAIT = 0.03
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields() -> list[int]:
    try:
        with open("/proc/stat") as handle:
            return [int(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave this VM's cores to others since boot (0 if unknown)."""
    fields = _stat_fields()
    return fields[7] / _TICKS if len(fields) > 7 else 0.0


def wait_seconds() -> float:
    """Seconds the calling thread was runnable but not running since it started (0 if unknown)."""
    try:
        with open("/proc/thread-self/schedstat") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def online_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Watch:
    """Counters at a round's start; ``verdict()`` at its end says why it was disturbed, or None."""

    wall: float
    steal: float
    wait: float

    @staticmethod
    def start() -> "Watch":
        return Watch(time.perf_counter(), steal_seconds(), wait_seconds())

    def verdict(self, cores: int | None = None) -> str | None:
        wall = time.perf_counter() - self.wall
        steal = steal_seconds() - self.steal
        wait = wait_seconds() - self.wait
        total = wall * (cores or os.cpu_count() or 1)
        if wall > 0 and steal > QUIET_STEAL * total:
            return f"the hypervisor stole {1e3 * steal:.0f} ms of a {1e3 * wall:.0f} ms round"
        if wall > 0 and wait > QUIET_WAIT * wall:
            return f"the probe waited {1e3 * wait:.1f} ms for its core in a {1e3 * wall:.0f} ms round"
        return None


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_name() -> str:
    return _cpuinfo().get("model name") or "unknown CPU"


def vector_lanes_fp32(flags: set[str]) -> int:
    """float32 lanes of the widest vector unit the flags name."""
    if "avx512f" in flags:
        return 16
    if "avx" in flags or "avx2" in flags:
        return 8
    return 4


def max_clock_hz(info: dict[str, str] | None = None) -> float | None:
    """The highest clock the kernel reports for cpu0 (cpufreq's maximum, else cpuinfo's current MHz)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) * 1e3
    except (OSError, ValueError):
        pass
    info = _cpuinfo() if info is None else info
    try:
        return float(info["cpu MHz"]) * 1e6
    except (KeyError, ValueError):
        return None


def vector_bytes(flags: set[str]) -> int:
    """Bytes of the widest vector register the flags name (the most one load or store moves)."""
    return 4 * vector_lanes_fp32(flags)


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def core_peak_flops() -> float | None:
    """float32 FLOP/s one core cannot exceed (module docstring), or None where /proc does not say."""
    info = _cpuinfo()
    clock = max_clock_hz(info)
    if clock is None:
        return None
    return vector_lanes_fp32(set(info.get("flags", "").split())) * 2 * 2 * clock
