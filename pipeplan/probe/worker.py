"""One probe rank: pinned to cores of its own, it times the kernel benchmarks and its side of the link.

Started by ``pipeplan.probe.run`` as ``python -m pipeplan.probe.worker`` (rank 0 or 1); it writes one
result mapping to the file it is given, or ``{"rank": r, "error": "..."}``. On a CPU both ranks time the kernels at the
same time, each on its own core, as two pipeline devices compute side by side in a validation run
(sharing the last-level cache and the memory bus); on a GPU only rank 0 does, so that two ranks on one
GPU do not time-slice it. Each benchmark runs in rounds of ``reps`` shuffled passes; a round the
machine disturbed (``pipeplan.probe.machine.Watch``) is run again, up to ``TRIES`` times, and the
result says when every try stayed disturbed (the least disturbed one is kept).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import timedelta
from typing import Any

from .machine import Watch, online_cores, steal_seconds, wait_seconds

TRIES = 3
# Compute threads per rank: the validator's default (``pipeplan validate --threads``), one core each.
THREADS = 1
# The kernel benchmarks, in the order they run (``_cases`` builds each one's cases).
BENCHMARKS = ("gemm", "attention_forward", "attention_backward", "elementwise_forward",
              "elementwise_backward", "layer", "copy")
# Benchmarks that take more passes per round: a layer's fixed cost and its cost per byte come from
# differences between a few shapes, so their medians need more samples than a curve over dozens.
MORE_REPS = {"layer": 2}


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a SIGKILL of the probe's parent ends this rank too (Linux; else nothing)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _pin(rank: int, ranks: int) -> list[int] | None:
    """Equal consecutive slices of the allowed cores, one per rank (as ``validator.run`` pins)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        per = len(cpus) // ranks
        if per >= 1:
            mine = cpus[rank * per:(rank + 1) * per]
            os.sched_setaffinity(0, mine)
            return mine
    except (AttributeError, OSError):
        pass
    return None


def _cases(torch: Any, name: str, device: Any, dtype: Any) -> list:
    from . import kernels, layer

    grid = kernels.GRIDS[device.type]
    if name == "gemm":
        return kernels.gemm_cases(torch, device, dtype, grid)
    if name.startswith("attention_"):
        return kernels.attention_cases(torch, device, dtype, grid, backward=name.endswith("backward"))
    if name.startswith("elementwise_"):
        return kernels.elementwise_cases(torch, device, dtype, grid, backward=name.endswith("backward"))
    if name == "layer":
        return layer.layer_cases(torch, device, dtype)
    return kernels.copy_cases(torch, device, dtype, grid)


def _disturbance(watch: Watch) -> tuple[str | None, float]:
    """(why the round since ``watch`` was disturbed or None, steal + wait as a share of its wall time)."""
    wall = max(time.perf_counter() - watch.wall, 1e-9)
    amount = (steal_seconds() - watch.steal + wait_seconds() - watch.wait) / wall
    return watch.verdict(online_cores()), amount


def measure(timer: Any, cases: list, reps: int, seed: int) -> tuple[list[list[float]], str | None, int]:
    """(samples per case, why every try was disturbed or None, tries used)."""
    from .kernels import run_rounds

    run_rounds(timer, cases, 1, seed)  # warm-up: allocations, kernel selection, caches
    best: tuple[float, list[list[float]], str | None] | None = None
    for attempt in range(TRIES):
        watch = Watch.start()
        samples = run_rounds(timer, cases, reps, seed + attempt + 1)
        why, amount = _disturbance(watch)
        if why is None:
            return samples, None, attempt + 1
        if best is None or amount < best[0]:
            best = (amount, samples, why)
    return best[1], f"disturbed in all {TRIES} tries ({best[2]} in the least disturbed)", TRIES


def main(argv: list[str]) -> int:
    """``python -m pipeplan.probe.worker RANK RANKS OPTIONS_JSON STORE OUT``: one rank; its result (or
    ``{"rank": r, "error": "..."}``) is written to OUT as JSON, then renamed into place."""
    _die_with_parent()
    rank, ranks, options, store, out = int(argv[0]), int(argv[1]), json.loads(argv[2]), argv[3], argv[4]
    try:
        result = _rank(rank, ranks, options, store)
    except BaseException as err:  # report any failure to the launcher, which names the rank
        result = {"rank": rank, "error": traceback.format_exception_only(type(err), err)[-1].strip()}
    with open(out + ".part", "w") as handle:
        json.dump(result, handle)
    os.replace(out + ".part", out)
    return 0 if "error" not in result else 1


def _rank(rank: int, ranks: int, options: dict, store_path: str) -> dict:
    import torch
    import torch.distributed as dist

    from .kernels import Case, Timer

    cores = _pin(rank, ranks)
    torch.set_num_threads(THREADS)
    cuda = options["device"] == "cuda"
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if cuda else torch.float32
    wait = options["wait_s"]
    dist.init_process_group(options["backend"], init_method=f"file://{store_path}", rank=rank, world_size=ranks,
                            timeout=timedelta(seconds=wait))
    try:
        timer = Timer(torch, device)
        results: dict[str, Any] = {}
        if rank == 0 or not cuda:
            for k, name in enumerate(BENCHMARKS):
                cases: list[Case] = _cases(torch, name, device, dtype)
                reps = options["reps"] * MORE_REPS.get(name, 1)
                samples, why, tries = measure(timer, cases, reps, seed=1000 * k + 17 * rank)
                results[name] = {"shapes": [list(c.shape) for c in cases], "sizes": [c.size for c in cases],
                                 "dims": [list(c.dims) for c in cases], "samples": samples,
                                 "disturbed": why, "tries": tries}
                if name == "layer" and not cuda:  # the GEMMs and attention cores as they ran inside each pass
                    from .layer import INSIDE_REPS, inside

                    results[name]["inside"] = inside(timer, cases, INSIDE_REPS, seed=1000 * k + 17 * rank + 7)
                del cases
        _barrier(dist, wait)
        link, why, tries = _measure_link(torch, dist, rank, device, options, cuda)
        if rank == 0:
            from .links import SIZES

            results["link"] = {"shapes": [[n] for n in SIZES], "sizes": list(SIZES), "dims": [[] for _ in SIZES],
                               "samples": link, "disturbed": why, "tries": tries}
        _barrier(dist, wait)
        name = torch.cuda.get_device_name(device) if cuda else None
        props = torch.cuda.get_device_properties(device) if cuda else None
        return {"rank": rank, "cores": cores, "results": results, "torch": torch.__version__,
                "cuda_name": name, "sms": props.multi_processor_count if props else None,
                "cuda_memory": props.total_memory if props else None}
    finally:
        dist.destroy_process_group()


def _measure_link(torch: Any, dist: Any, rank: int, device: Any, options: dict, cuda: bool):
    """The ping-pong, run again (up to ``TRIES``) while either rank saw the machine disturbed:
    (samples, why the kept try was disturbed or None, tries)."""
    from .links import ping_pong

    staged = options["backend"] == "gloo" and cuda
    flag_device = device if options["backend"] == "nccl" else torch.device("cpu")
    best = None
    for attempt in range(TRIES):
        watch = Watch.start()
        samples = ping_pong(torch, dist, rank, device, staged, options["link_reps"], options["wait_s"], 99 + attempt,
                            prepost=options["backend"] == "gloo")
        why, amount = _disturbance(watch)
        # Both ranks learn the larger disturbance, so they agree on whether to run again.
        shared = torch.tensor([amount if why else 0.0], dtype=torch.float64, device=flag_device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        worst = float(shared.item())
        if worst == 0.0:
            return samples, None, attempt + 1
        if best is None or worst < best[0]:
            best = (worst, samples, why or "the other rank's round was disturbed")
    return best[1], f"disturbed in all {TRIES} tries ({best[2]} in the least disturbed)", TRIES


def _barrier(dist: Any, wait: float) -> None:
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timedelta(seconds=wait))
    else:
        dist.barrier()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
