"""The files one run of a command reads and writes, checked together before any work starts.

Every handler calls ``check_paths(reads, writes)`` once it knows its inputs (after loading a plan,
which names model, cluster and schedule files of its own) and before it simulates, searches, draws
or launches anything. Each entry is ``(flag, path)``; the flag names the path in the error. Refused,
each with one line: an output that is one of the inputs (the same path, a symlink to it or a hard
link: same st_dev and st_ino), two outputs on one path, and whatever ``fileio.output_target``
refuses (a folder, a missing folder, a path in /proc or /sys, a block device or socket). Character
devices and FIFOs pass: they are written through, never replaced.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from ..errors import SpecError
from ..fileio import WRITE_THROUGH, output_target

if TYPE_CHECKING:
    from ..plan import Plan

Entry = tuple[str, Optional[str]]  # (flag, path); a None path is a flag not given


def check_paths(reads: Iterable[Entry], writes: Iterable[Entry], read_back: tuple[str, ...] = ()) -> None:
    """Raise a one-line SpecError for the first output that is an input, repeats another output or
    may not be written (see the module docstring). The outputs of the flags in ``read_back`` are read
    again after they are written, so they must be files, not a character device or a FIFO."""
    inputs = [(flag, path, _identity(path)) for flag, path in reads if path]
    taken: list[tuple[str, str, str, tuple[int, int] | None]] = []
    for flag, path in writes:
        if path is None:
            continue
        target = output_target(path, flag)
        if flag in read_back and target.kind in WRITE_THROUGH:
            raise SpecError(f"{flag}: {path!r} is a {target.kind}, and this command reads the output back; "
                            "give a regular file")
        for in_flag, in_path, identity in inputs:
            if os.path.realpath(in_path) == target.real or (identity is not None and identity == target.identity):
                raise SpecError(f"{flag}: {path!r} is the input {in_flag} ({in_path!r}); an output never "
                                "replaces what the command reads, choose another path")
        for other_flag, other_path, real, identity in taken:
            if real == target.real or (identity is not None and identity == target.identity):
                raise SpecError(f"{flag}: {path!r} is also the output of {other_flag} ({other_path!r}); "
                                "give each output its own path")
        taken.append((flag, path, target.real, target.identity))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def spec_reads(flag: str, spec: object, base_dir: str | Path = ".") -> list[Entry]:
    """The file a model or cluster given as ``spec`` reads, if it names one: the file beside the plan
    (``base_dir``) first, as ``pipeplan.specs`` looks it up, and the path as given."""
    from ..specs import beside  # loads the cost model; only commands that take specs get here

    if not isinstance(spec, str):
        return []
    found = {str(beside(spec, base_dir)), spec}
    # A Hugging Face model folder is read through the config.json inside it.
    found |= {os.path.join(path, "config.json") for path in found if os.path.isdir(path)}
    return [(flag, path) for path in sorted(found) if os.path.isfile(path)]


def plan_reads(plan: "Plan", base_dir: str | Path, label: str = "plan") -> list[Entry]:
    """The files ``plan`` names: its model and cluster files and its custom schedule CSV."""
    reads = spec_reads(f"{label}.model", plan.model, base_dir) + spec_reads(f"{label}.cluster", plan.cluster, base_dir)
    if plan.schedule_csv:
        csv_path = Path(plan.schedule_csv)
        reads.append((f"{label}.schedule_csv", str(csv_path if csv_path.is_absolute() else Path(base_dir) / csv_path)))
    return reads
