"""The validator's options: one frozen type, one argparse declaration, one argv form.

``pipeplan validate`` (the launcher, role ``"launcher"``) and ``python -m validator`` (a rank, role
``"rank"``) declare their flags through ``ValidateOptions.add_arguments``; the launcher hands the
options to the ranks as ``to_argv()``, which a rank reads back with ``from_argv`` (or its own parser
and ``from_args``).

``--timeout`` is the one flag whose meaning depends on the role: for the launcher it is the whole
run's budget (it watches the run and kills it), for a rank the limit of one wait on a peer (field
``wait``; a rank has nothing else to watch). ``to_argv`` passes the launcher's ``wait_timeout``.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

from ..errors import SpecError
from ..limits import RANGES


def shown_count(value: int) -> str:
    """A count as an error quotes it: a number of hundreds of digits cut to its first ones."""
    text = f"{value:,}"
    return text if len(text) <= 40 else f"{text[:20]}... ({len(str(value))} digits)"

BACKENDS = ("gloo", "nccl")
DEVICES = ("cpu", "cuda")
# Who executes the schedule: pipeplan's own executor (validator.runtime) or torch.distributed.pipelining's
# schedule runtime (validator.torch_runtime).
RUNTIMES = ("pipeplan", "torch")
LAUNCHER, RANK = "launcher", "rank"
# The longest --timeout accepted, a week: beyond it a run is stuck, not slow, and the clock waits
# of the launcher and the ranks (millisecond counts in C) stay far from overflowing.
MAX_TIMEOUT_S = 7 * 24 * 3600.0
# The most of each count a run takes, checked before anything starts: a run past them cannot end inside
# any --timeout (a CPU iteration of the tiny plan takes ~10 ms, so 100,000 of them are already 17 min),
# and a huge count would only start torchrun to be killed by the watchdog. Threads: limits.RANGES["workers"].
MAX_COUNTS = {"iterations": 100_000, "warmup": 100_000, "calibration_reps": 1_000}


@dataclass(frozen=True)
class ValidateOptions:
    """How to run a plan for real; every field is checked here, with the flag named in the error.

    ``timeout``: seconds for the whole run (the launcher's watchdog). ``wait``: seconds one rank may
    wait on another; None derives it from ``timeout`` (see ``wait_timeout``).
    """

    backend: str = "gloo"
    device: str = "cpu"
    iterations: int = 10
    warmup: int = 3
    timeout: float = 300.0
    scale: float = 1.0
    calibration_reps: int = 1
    threads: int | None = None
    wait: float | None = None
    runtime: str = "pipeplan"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise SpecError(f"--backend: choose gloo or nccl (got {self.backend!r})")
        if self.device not in DEVICES:
            raise SpecError(f"--device: choose cpu or cuda (got {self.device!r})")
        if self.backend == "nccl" and self.device != "cuda":
            raise SpecError("--backend nccl: NCCL moves GPU tensors only; add --device cuda or use gloo")
        if self.runtime not in RUNTIMES:
            raise SpecError(f"--runtime: choose pipeplan or torch (got {self.runtime!r})")
        if self.runtime == "torch" and self.device == "cuda" and self.backend == "gloo":
            raise SpecError("--runtime torch: torch's runtime sends the stages' CUDA tensors as they are and gloo "
                            "moves CPU tensors only; use --backend nccl (one GPU per rank) or --runtime pipeplan")
        for name in ("iterations", "calibration_reps"):
            if getattr(self, name) < 1:
                raise SpecError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.warmup < 0:
            raise SpecError("--warmup: must be >= 0")
        for name, most in MAX_COUNTS.items():
            value = getattr(self, name)
            if value > most:
                raise SpecError(f"--{name.replace('_', '-')}: must be at most {most:,} (got {shown_count(value)}); "
                                "a longer run cannot end inside --timeout")
        for value in (self.timeout, self.wait):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S):
                raise SpecError(f"--timeout: must be a number of seconds in (0, {MAX_TIMEOUT_S:.0f}] (a week); "
                                f"got {value!r}")
        if not 0 < self.scale <= 1:
            raise SpecError(f"--scale: must be in (0, 1] (got {self.scale})")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise SpecError(f"--threads: must be a positive integer (got {self.threads!r}); leave it out for cores / ranks")
        if self.threads is not None and self.threads > RANGES["workers"].high:
            raise SpecError(f"--threads: must be at most {RANGES['workers'].high:,} per rank (got "
                            f"{shown_count(self.threads)}); leave it out for cores / ranks")

    @property
    def wait_timeout(self) -> float:
        """How long one rank waits on another before giving up: ``wait`` if given, else a third of the
        whole run's budget between 2 and 60 s, so a dead or hung rank is reported well inside ``timeout``."""
        if self.wait is not None:
            return self.wait
        return max(2.0, min(60.0, self.timeout / 3))

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, role: str) -> None:
        """Declare the options' flags on ``parser`` for ``role`` (``"launcher"`` or ``"rank"``)."""
        d = {f.name: f.default for f in fields(ValidateOptions)}
        parser.add_argument("--backend", choices=BACKENDS, default=d["backend"],
                            help="torch.distributed backend (default gloo)")
        parser.add_argument("--device", choices=DEVICES, default=d["device"],
                            help="where the stages compute (default cpu)")
        parser.add_argument("--iterations", type=int, default=d["iterations"], help="timed iterations (default 10)")
        parser.add_argument("--warmup", type=int, default=d["warmup"], help="untimed iterations before them (default 3)")
        if role == LAUNCHER:
            parser.add_argument("--timeout", type=float, default=d["timeout"],
                                help="seconds for the whole run; any single wait gives up after a third of it, "
                                "2 to 60 s (default 300)")
        elif role == RANK:
            parser.add_argument("--timeout", dest="wait", type=float, default=None,
                                help="seconds any single wait may take (default 60)")
        else:
            raise ValueError(f"role: {LAUNCHER!r} or {RANK!r}, not {role!r}")
        parser.add_argument("--scale", type=float, default=d["scale"],
                            help="multiply hidden size, FFN, vocabulary, sequence and micro-batch by this (0, 1], "
                            "keeping layers, cuts and schedule, so a big preset fits a small machine (default 1)")
        parser.add_argument("--calibration-reps", type=int, default=d["calibration_reps"],
                            help="link timings per size before each iteration, x2 (default 1)")
        parser.add_argument("--threads", type=int, default=d["threads"],
                            help="torch threads per rank (default: cores / ranks)")
        parser.add_argument("--runtime", choices=RUNTIMES, default=d["runtime"],
                            help="who executes the schedule: pipeplan's own executor or torch.distributed.pipelining's "
                            "schedule runtime (default pipeplan)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ValidateOptions":
        """The options in a namespace parsed with ``add_arguments`` (other attributes are ignored)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def to_argv(self) -> list[str]:
        """The rank's flags for these options (``--timeout`` is one wait's limit there)."""
        argv = ["--backend", self.backend, "--device", self.device, "--iterations", str(self.iterations),
                "--warmup", str(self.warmup), "--timeout", repr(float(self.wait_timeout)),
                "--scale", repr(float(self.scale)), "--calibration-reps", str(self.calibration_reps),
                "--runtime", self.runtime]
        if self.threads is not None:
            argv += ["--threads", str(self.threads)]
        return argv

    @classmethod
    def from_argv(cls, argv: list[str]) -> "ValidateOptions":
        """Read ``to_argv``'s flags back, as a rank does (nothing but these flags is accepted)."""
        parser = argparse.ArgumentParser(prog="python -m validator", add_help=False)
        cls.add_arguments(parser, RANK)
        return cls.from_args(parser.parse_args(argv))
