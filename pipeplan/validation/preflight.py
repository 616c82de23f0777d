"""Everything ``run_validation`` refuses before it starts a process, each as a one-line ``SpecError``.

* the plan: its specs load, its sends overlap, its actions are ones the ranks run (F, B, I, W), its
  recomputation none or full; with tensor parallelism heads, KV heads, FFN width and vocabulary
  divisible by tp, and with sequence parallelism the sequence too; with data parallelism no stage the simulator would split
  into gradient buckets (the validator reduces each stage as one);
  tp = dp = 1 with ``--runtime torch`` and for a serving plan, which also gets what
  ``serving.check_serving_plan`` refuses;
* ``--out``: its folder exists and it is not a folder itself;
* ``--device cuda``: torch sees a CUDA device here (asked in a short-lived ``python -c`` that imports
  torch, so this process never does), enough of them for NCCL's one rank per GPU;
* memory: the run's estimate (``footprint``) fits what this host (or each GPU) has free, else the
  error says the figures and the largest ``--scale`` that fits.
"""
from __future__ import annotations

import importlib.util

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.ir import Schedule
from simulator.kinds import COMPOSITE_KINDS, COMPUTE_KINDS

from ..errors import SpecError
from ..model import ModelSpec
from ..plan import Plan
from ..scaling import scale_plan
from ..specs import resolve
from .footprint import RANK_BASE_BYTES, rank_bytes
from .options import ValidateOptions

CUDA_PROBE_TIMEOUT_S = 120.0
# Asked in a separate interpreter: importing torch here would cost the launcher seconds and memory.
_CUDA_PROBE = ("import json, torch; ok = torch.cuda.is_available(); n = torch.cuda.device_count() if ok else 0; "
               "print(json.dumps([list(torch.cuda.mem_get_info(i)) for i in range(n)] if ok else None))")
GB = 1e9


def _size(nbytes: float) -> str:
    return f"{nbytes / GB:.1f} GB" if nbytes >= 0.1 * GB else f"{nbytes / 1e6:.0f} MB"


@dataclass(frozen=True)
class Checked:
    """A plan that passed the checks, with its specs as the ranks will build them (scaled)."""

    plan: Plan
    model: ModelSpec
    schedule: Schedule
    serving: Any = None  # a serving plan's ``ServingResolved``


def check_plan(plan_path: str, scale: float, runtime: str = "pipeplan") -> Checked:
    """The plan at ``plan_path`` as the ranks will load it, or a ``SpecError`` saying why it cannot run."""
    plan = Plan.load(plan_path)
    if plan.pp < 1:
        raise SpecError("plan.pp: must be at least 1")
    if plan.blocking_p2p:
        raise SpecError("plan.blocking_p2p: the validator's sends overlap compute; set blocking_p2p false to validate")
    if (plan.tp > 1 or plan.dp > 1) and (plan.serving is not None or runtime == "torch"):
        what = "a serving plan" if plan.serving is not None else "--runtime torch"
        raise SpecError(f"plan: {what} runs one pipeline replica (tp = 1, dp = 1); this plan has tp = {plan.tp}, "
                        f"dp = {plan.dp}" + ("; use --runtime pipeplan" if plan.serving is None else ""))
    base = Path(plan_path).resolve().parent
    if plan.serving is not None:
        from .serving import check_serving_plan

        served = check_serving_plan(plan, base, runtime, scale)
        return Checked(plan, served.model, served.schedule, served)
    resolved = resolve(plan.model, plan.cluster, plan, base)
    # torch's runtime runs an overlapped pair's two parts one after the other (validator.torch_runtime).
    runs = set(COMPUTE_KINDS) | (set(COMPOSITE_KINDS) if runtime == "torch" else set())
    not_run = sorted(resolved.schedule.kinds_present - runs)
    if not_run:
        torch_runs = " or validate with --runtime torch" if set(not_run) <= set(COMPOSITE_KINDS) else ""
        raise SpecError(f"plan.schedule_csv: the validator runs F, B, I and W actions only; remove the "
                        f"{', '.join(not_run)} actions to validate the pipeline (the simulator prices them)"
                        f"{torch_runs}")
    if "selective" in plan.recompute:
        raise SpecError("plan.recompute: the validator runs none or full recomputation, not selective (the simulator prices it)")
    check_parallel(resolved)
    if scale == 1:
        return Checked(plan, resolved.model, resolved.schedule)
    scaled = scale_plan(plan, resolved.model, scale)
    again = resolve(scaled.model, scaled.cluster, scaled, base)
    check_parallel(again)  # the scaled widths must split over tp too
    return Checked(scaled, again.model, again.schedule)


def check_parallel(resolved) -> None:
    """Refuse tensor- and data-parallel settings the validator does not run (see the module docstring)."""
    from ..buckets import FIRST
    from ..dataparallel import DataParallelOptions, stage_buckets

    plan, model = resolved.plan, resolved.model
    if plan.tp > 1:
        if plan.scatter_gather_p2p:
            raise SpecError("plan.scatter_gather_p2p: the validator's tensor ranks each send the whole pipeline "
                            "message; set it false to validate (the simulator prices it)")
        seq = plan.seq_len or model.seq_len
        if plan.sequence_parallel and seq % plan.tp:
            raise SpecError(f"plan.sequence_parallel: the sequence ({seq}) is not divisible by tp = {plan.tp}; "
                            "pick a seq_len that tp divides or set sequence_parallel false")
        for name, value in (("heads", model.heads), ("kv_heads", model.kv_heads or model.heads),
                            ("ffn_hidden", model.ffn_hidden), ("vocab", model.vocab)):
            if value % plan.tp:
                raise SpecError(f"plan.tp: the model's {name} ({value}) is not divisible by tp = {plan.tp}; "
                                "pick a tp that divides it")
    if plan.dp > 1:
        if plan.overlap_grad_reduce:
            for stage in range(plan.num_stages):
                if stage_buckets(resolved, stage, DataParallelOptions(bucketed_stages=FIRST)):
                    raise SpecError(f"plan.overlap_grad_reduce: the simulator splits stage {stage}'s gradients into "
                                    "buckets and the validator reduces a stage as one; set it false to validate")


def check_out(out: str | None) -> None:
    """``--out`` names a file (new or to be replaced) in an existing folder."""
    if not out:
        return
    path = Path(out)
    if path.is_dir():
        raise SpecError(f"--out: {out!r} is a folder; give a file path for the report, e.g. {str(path / 'report.json')!r}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SpecError(f"--out: folder {str(folder)!r} does not exist")


def cuda_free_bytes(timeout: float = CUDA_PROBE_TIMEOUT_S) -> list[int]:
    """Free bytes on each CUDA device torch sees here; ``SpecError`` when it sees none."""
    try:
        probe = subprocess.run([sys.executable, "-c", _CUDA_PROBE], capture_output=True, text=True,
                               timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SpecError(f"--device cuda: asking torch for CUDA devices took over {timeout:g} s; "
                        "check the driver with nvidia-smi") from None
    lines = probe.stdout.strip().splitlines()
    try:
        devices = json.loads(lines[-1]) if probe.returncode == 0 and lines else "failed"
    except ValueError:
        devices = "failed"
    if devices == "failed":
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise SpecError(f"--device cuda: torch failed to report its CUDA devices ({last})")
    if not devices:
        raise SpecError("--device cuda: torch sees no CUDA device here; use --device cpu, or install a CUDA "
                        "build of torch on a machine with a GPU")
    return [int(free) for free, _total in devices]


def _meminfo_available() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> float | None:
    """What this process's memory cgroup (v2, else v1) still allows, if it sets a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = float(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or float(limit) >= 2 ** 60:  # no limit set
            return None
        return float(limit) - usage
    return None


def available_host_bytes() -> float | None:
    """Memory this host can still give without swapping (Linux; None where it cannot be read)."""
    figures = [f for f in (_meminfo_available(), _cgroup_headroom()) if f is not None]
    return min(figures) if figures else None


def _need(checked: Checked, options: ValidateOptions, gpus: int) -> tuple[float, list[float]]:
    """(host bytes, bytes per GPU) the run needs."""
    if checked.serving is not None:
        from .serving import serving_rank_bytes

        ranks = serving_rank_bytes(checked.serving, on_gpu=options.device == "cuda")
    else:
        # Every (data, tensor) replica's ranks counted as large as the tp = 1 pipeline's (a tensor rank
        # builds its stages whole before keeping its share).
        ranks = rank_bytes(checked.model, checked.plan, checked.schedule, on_gpu=options.device == "cuda")
        ranks = [r for r in ranks for _ in range(checked.plan.tp * checked.plan.dp)]
    host = sum(RANK_BASE_BYTES + r.host for r in ranks)
    per_gpu = [0.0] * gpus
    for rank, need in enumerate(ranks if gpus else ()):  # validator.run: rank r computes on GPU r % count
        per_gpu[rank % gpus] += need.device
    return host, per_gpu


def _fitting_scale(plan_path: str, options: ValidateOptions, fits) -> float | None:
    """The largest of --scale 1/2, 1/4, ... 1/64 below ``options.scale`` whose estimate ``fits``."""
    scale = options.scale / 2
    while scale >= 1 / 64:
        if fits(check_plan(plan_path, scale, options.runtime)):
            return scale
        scale /= 2
    return None


def check_memory(plan_path: str, checked: Checked, options: ValidateOptions, host_free: float | None,
                 gpu_free: list[int]) -> None:
    """Refuse a run whose estimate exceeds the free host memory, or a GPU's free memory."""
    def fits(c: Checked) -> bool:
        host, per_gpu = _need(c, options, len(gpu_free))
        return (host_free is None or host <= host_free) and all(n <= f for n, f in zip(per_gpu, gpu_free))

    if fits(checked):
        return
    host, per_gpu = _need(checked, options, len(gpu_free))
    if host_free is not None and host > host_free:
        where = (f"{checked.plan.num_gpus} ranks need about {_size(host)} of host memory "
                 f"and {_size(host_free)} is available")
    else:
        gpu = max(range(len(per_gpu)), key=lambda g: per_gpu[g] - gpu_free[g])
        where = f"GPU {gpu} needs about {_size(per_gpu[gpu])} and has {_size(gpu_free[gpu])} free"
    smaller = _fitting_scale(plan_path, options, fits)
    fix = f"run it with --scale {smaller:g}" if smaller else "free memory or run a plan with fewer devices"
    raise SpecError(f"plan: too big for this machine at --scale {options.scale:g}: {where} (estimate: weights, "
                    f"gradients, the schedule's live activations and {_size(RANK_BASE_BYTES)} per rank); {fix}")


def preflight(plan_path: str, options: ValidateOptions, out: str | None) -> Checked:
    """Every check that can refuse the run, in the order a user fixes them; nothing is started."""
    checked = check_plan(plan_path, options.scale, options.runtime)
    check_out(out)
    if importlib.util.find_spec("torch") is None:  # after the plan's own faults: those need fixing either way
        raise SpecError("validate: needs torch; install it with pip install 'pipeplan[validate]'")
    gpu_free = cuda_free_bytes() if options.device == "cuda" else []
    if options.backend == "nccl" and checked.plan.num_gpus > len(gpu_free):
        raise SpecError(f"--backend nccl: {checked.plan.num_gpus} ranks on this node but "
                        f"{len(gpu_free)} GPU(s); NCCL refuses two ranks on one GPU, use --backend gloo "
                        "(it stages boundary tensors through host memory)")
    check_memory(plan_path, checked, options, available_host_bytes(), gpu_free)
    return checked
