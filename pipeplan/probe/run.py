"""Running the probe: checks before anything starts, two spawned ranks, their results, the fitted spec.

``ProbeOptions`` are checked first (``check``): the device and backend (``--backend nccl`` needs two
GPUs; ``--device cuda`` a GPU torch can see, asked in a short-lived ``python -c`` as
``pipeplan validate`` asks), torch itself. Then ``probe`` starts ``RANKS`` processes (``python -m
pipeplan.probe.worker``, each in a session of its own) that meet through a file store in a temporary
folder and write their results there; every wait is bounded: a rank's collective waits by ``wait_s``,
the whole run by ``timeout_s``, after which the ranks are killed and the error names the one that did
not finish. A rank that fails ends the run at once (the other would only wait for it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cluster import ClusterSpec
from ..errors import SpecError
from .machine import core_peak_flops, cpu_name, online_cores
from .worker import THREADS

RANKS = 2
# The folder holding the pipeplan package, so the ranks import this very copy of it.
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])
DEVICES = ("cpu", "cuda")
BACKENDS = ("gloo", "nccl")
_CUDA_COUNT = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"


@dataclass(frozen=True)
class ProbeOptions:
    """What to probe and how long each part may take.

    ``reps``: timed passes per kernel round (samples per point per rank); ``link_reps``: round trips per
    message size; ``wait_s``: the longest any single wait of a rank may take; ``timeout_s``: the whole run."""

    device: str = "cpu"
    backend: str = "gloo"
    reps: int = 5
    link_reps: int = 15
    wait_s: float = 60.0
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise SpecError(f"--device: choose {' or '.join(DEVICES)} (got {self.device!r})")
        if self.backend not in BACKENDS:
            raise SpecError(f"--backend: choose {' or '.join(BACKENDS)} (got {self.backend!r})")
        if self.backend == "nccl" and self.device != "cuda":
            raise SpecError("--backend nccl: NCCL moves GPU tensors only; add --device cuda or use gloo")


def cuda_device_count(timeout: float = 60.0) -> int:
    """GPUs torch sees here, asked in a short-lived interpreter (a broken driver cannot hang this one)."""
    try:
        out = subprocess.run([sys.executable, "-c", _CUDA_COUNT], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SpecError(f"--device cuda: asking torch for CUDA devices took over {timeout:g} s; "
                        "check the driver with nvidia-smi") from None
    try:
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0
    except (IndexError, ValueError):
        return 0


def check(options: ProbeOptions, cuda_count=cuda_device_count) -> None:
    """Refuse, in one line, a probe that cannot run here, before any rank starts."""
    try:
        import torch  # noqa: F401  (the probe's ranks need it; fail here, not in a rank)
    except ImportError:
        raise SpecError("pipeplan probe needs torch: pip install 'pipeplan[validate]'") from None
    if options.device == "cuda":
        count = cuda_count()
        if count == 0:
            raise SpecError("--device cuda: torch sees no CUDA device here; use --device cpu, or run on a "
                            "machine with a GPU and a CUDA build of torch")
        if options.backend == "nccl" and count < RANKS:
            raise SpecError(f"--backend nccl: the link needs {RANKS} GPUs (NCCL puts one rank on each) and torch "
                            f"sees {count}; use --backend gloo")


def _memory_bytes(devices: int) -> float:
    try:
        with open("/proc/meminfo") as handle:
            total = float(handle.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        total = 8e9
    return total / max(devices, 1)


def _rank_command(rank: int, options: ProbeOptions, folder: str) -> list[str]:
    return [sys.executable, "-m", "pipeplan.probe.worker", str(rank), str(RANKS), json.dumps(asdict(options)),
            os.path.join(folder, "store"), os.path.join(folder, f"rank{rank}.json")]


def _read_result(folder: str, rank: int) -> dict | None:
    try:
        with open(os.path.join(folder, f"rank{rank}.json")) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def run_ranks(options: ProbeOptions) -> list[dict]:
    """Start the ranks, wait for both results (at most ``timeout_s``), and leave no process behind."""
    folder = tempfile.mkdtemp(prefix="pipeplan-probe-")
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_SOURCE_ROOT, os.environ.get("PYTHONPATH"))))}
    try:
        for rank in range(RANKS):
            with open(os.path.join(folder, f"rank{rank}.err"), "wb") as err:  # a file: a pipe could fill and block
                procs.append(subprocess.Popen(_rank_command(rank, options, folder), stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True))
        deadline = time.monotonic() + options.timeout_s
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                waiting = [r for r, p in enumerate(procs) if p.poll() is None]
                raise SpecError(f"probe: rank {waiting[0]} did not finish within {options.timeout_s:g} s; "
                                "is the machine overloaded?")
            failed = [r for r, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed:  # the other rank would wait for it until its own timeout
                break
            time.sleep(0.05)
        results = []
        for rank, p in enumerate(procs):
            result = _read_result(folder, rank)
            if result is not None and "error" in result:
                raise SpecError(f"probe: rank {rank} failed: {result['error']}")
            if result is None and p.poll() is not None:
                last = (Path(folder, f"rank{rank}.err").read_text(errors="replace").strip().splitlines()
                        or ["no output"])[-1]
                raise SpecError(f"probe: rank {rank} ended with exit code {p.returncode} and no result ({last})")
            results.append(result)
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def probe(options: ProbeOptions) -> ClusterSpec:
    """Measure this machine with ``RANKS`` ranks and return the fitted cluster spec (with its record)."""
    from .spec import build_spec

    start = time.perf_counter()
    results = run_ranks(options)
    cuda = options.device == "cuda"
    # One device per core on a CPU: each rank computes with one thread on a core of its own.
    devices = cuda_device_count() if cuda else max(1, online_cores() // THREADS)
    memory = results[0].get("cuda_memory") if cuda else _memory_bytes(devices)
    machine = {"cpu_name": cpu_name(), "peak_flops": None if cuda else core_peak_flops(),
               "memory_bytes": float(memory), "devices": devices}
    return build_spec(results, asdict(options), machine, time.perf_counter() - start)
