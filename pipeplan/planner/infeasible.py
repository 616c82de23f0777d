"""When nothing fits: how much memory per GPU, or how many pipeline devices, would be enough.

Both come from the same CP-SAT model with the memory limit turned into the objective (the leanest
split with recomputation allowed, 1F1B at b = 1, the schedule that keeps the fewest micro-batches).
"""
from __future__ import annotations

from simulator.schedules import build_schedule

from ..cluster import ClusterSpec
from ..model import ModelSpec
from .cpsat import solve
from .problem import Candidate, build_problem

SEARCH_TIME_LIMIT = 2.0


def leanest_peak_bytes(model: ModelSpec, cluster: ClusterSpec, pp: int, dp: int, batch: int, seq_len: int,
                       distributed_optimizer: bool) -> float | None:
    """The smallest per-device peak memory any split reaches at this pp (bytes), None if unknown."""
    if pp > model.num_pipeline_layers:
        return None
    candidate = Candidate("1f1b", 1, 1, batch)
    schedule = build_schedule("1f1b", pp, batch, 1)
    big = cluster.with_nodes(max(cluster.nodes, -(-pp * dp // cluster.gpus_per_node)))
    problem = build_problem(model, big, candidate, schedule, seq_len, [d * dp for d in range(pp)], dp,
                            distributed_optimizer)
    solution = solve(problem, time_limit=SEARCH_TIME_LIMIT, minimize_memory=True)
    if not solution.found:
        return None
    return solution.objective * problem.memory_unit


def explain_infeasible(model: ModelSpec, cluster: ClusterSpec, pp: int, dp: int, batch: int, seq_len: int,
                       headroom: float, distributed_optimizer: bool, gpus: list[int]) -> str:
    """One line: what does not fit, the memory per GPU that would, and the pp that would."""
    capacity = cluster.gpu.memory_bytes * (1 - headroom)
    need = leanest_peak_bytes(model, cluster, pp, dp, batch, seq_len, distributed_optimizer)
    parts = [f"no plan fits {model.name} on pp = {pp} GPUs of {cluster.gpu.memory_bytes / 1e9:.0f} GB "
             f"({headroom:.0%} headroom)"]
    if need is not None:
        parts.append(f"the leanest split needs {need / 1e9:.1f} GB per GPU, i.e. GPUs of at least "
                     f"{need / (1 - headroom) / 1e9:.1f} GB")
    lo, hi = pp, None
    candidate = pp * 2
    while candidate <= model.num_pipeline_layers:
        peak = leanest_peak_bytes(model, cluster, candidate, dp, batch, seq_len, distributed_optimizer)
        if peak is not None and peak <= capacity:
            hi = candidate
            break
        lo, candidate = candidate, candidate * 2
    if hi is None and lo < model.num_pipeline_layers:
        last = model.num_pipeline_layers
        peak = leanest_peak_bytes(model, cluster, last, dp, batch, seq_len, distributed_optimizer)
        if peak is not None and peak <= capacity:
            hi = last
    if hi is not None:
        while hi - lo > 1:  # the leanest peak only shrinks as devices are added
            mid = (lo + hi) // 2
            peak = leanest_peak_bytes(model, cluster, mid, dp, batch, seq_len, distributed_optimizer)
            lo, hi = (lo, mid) if peak is not None and peak <= capacity else (mid, hi)
        parts.append(f"or use --pp {hi} ({hi * dp} GPUs with dp = {dp}, --nodes to match)")
    else:
        parts.append("no pipeline depth fixes it; use GPUs with more memory, a distributed optimizer or a larger dp")
    return "; ".join(parts)
