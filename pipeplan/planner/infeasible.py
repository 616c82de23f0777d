"""When nothing fits: how much memory per GPU, or how many pipeline devices, would be enough.

Both come from the same CP-SAT model with the memory limit turned into the objective (the leanest
split with recomputation allowed, 1F1B at b = 1, the schedule that keeps the fewest micro-batches).
"""
from __future__ import annotations

from simulator.schedules import build_schedule

from ..cluster import ClusterSpec
from ..model import ModelSpec
from ..plan import default_placement
from .baselines import megatron_uniform
from .cpsat import solve
from .problem import Candidate, build_problem

SEARCH_TIME_LIMIT = 2.0


def _lean_problem(model: ModelSpec, cluster: ClusterSpec, pp: int, dp: int, batch: int, seq_len: int,
                  distributed_optimizer: bool, headroom: float, tp: int = 1, sequence_parallel: bool = False):
    candidate = Candidate("1f1b", 1, 1, batch)
    schedule = build_schedule("1f1b", pp, batch, 1)
    big = cluster.with_nodes(max(cluster.nodes, -(-pp * dp * tp // cluster.gpus_per_node)))
    return build_problem(model, big, candidate, schedule, seq_len, default_placement(pp, dp, tp), dp,
                         distributed_optimizer, headroom, tp=tp, sequence_parallel=sequence_parallel)


def leanest_peak_bytes(model: ModelSpec, cluster: ClusterSpec, pp: int, dp: int, batch: int, seq_len: int,
                       distributed_optimizer: bool, tp: int = 1, sequence_parallel: bool = False) -> float | None:
    """The smallest per-device peak memory a split reaches at this pp (bytes; the best found within
    the budget, so an upper bound), None if unknown."""
    problem = _lean_problem(model, cluster, pp, dp, batch, seq_len, distributed_optimizer, 0.0, tp, sequence_parallel)
    solution = solve(problem, time_limit=SEARCH_TIME_LIMIT, objective="memory")
    return solution.objective * problem.memory_unit if solution.found else None


def fits_at(model: ModelSpec, cluster: ClusterSpec, pp: int, dp: int, batch: int, seq_len: int,
            distributed_optimizer: bool, headroom: float, tp: int = 1, sequence_parallel: bool = False) -> bool:
    """Whether some split (1F1B, b = 1, recomputation allowed) fits on ``pp`` devices."""
    if pp > model.num_pipeline_layers:
        return False
    problem = _lean_problem(model, cluster, pp, dp, batch, seq_len, distributed_optimizer, headroom, tp,
                            sequence_parallel)
    hint = megatron_uniform(model, pp)  # fits more often than not once pp is large enough: a quick witness
    return solve(problem, time_limit=SEARCH_TIME_LIMIT, objective="none", hint=hint).found


def explain_infeasible(model: ModelSpec, cluster: ClusterSpec, pp: int, dp: int, batch: int, seq_len: int,
                       headroom: float, distributed_optimizer: bool, gpus: list[int], tp: int = 1,
                       sequence_parallel: bool = False) -> str:
    """One line: what does not fit, the memory per GPU that would, and the pp that would."""
    need = leanest_peak_bytes(model, cluster, pp, dp, batch, seq_len, distributed_optimizer, tp, sequence_parallel)
    where = f"pp = {pp} GPUs" if tp == 1 else f"pp = {pp} tensor groups of tp = {tp}"
    parts = [f"no plan fits {model.name} on {where} of {cluster.gpu.memory_bytes / 1e9:.0f} GB "
             f"({headroom:.0%} headroom)"]
    if need is not None:
        parts.append(f"the leanest split needs {need / 1e9:.1f} GB per GPU, i.e. GPUs of at least "
                     f"{need / (1 - headroom) / 1e9:.1f} GB")
    args = (dp, batch, seq_len, distributed_optimizer, headroom, tp, sequence_parallel)
    lo, hi, candidate = pp, None, pp * 2
    while candidate < model.num_pipeline_layers and not fits_at(model, cluster, candidate, *args):
        lo, candidate = candidate, candidate * 2
    candidate = min(candidate, model.num_pipeline_layers)
    if fits_at(model, cluster, candidate, *args):
        hi = candidate
    if hi is not None:
        while hi - lo > 1:  # the leanest peak only shrinks as devices are added
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits_at(model, cluster, mid, *args) else (mid, hi)
        parts.append(f"or use --pp {hi} ({hi * dp * tp} GPUs with dp = {dp}" + (f", tp = {tp}" if tp > 1 else "")
                     + ", --nodes to match)")
    else:
        parts.append("no pipeline depth fixes it; use GPUs with more memory, a distributed optimizer or a larger dp")
    return "; ".join(parts)
