"""When nothing fits: how much memory per GPU, or how many pipeline devices, would be enough.

Both come from the same CP-SAT model with the memory limit turned into the objective (the leanest
split with recomputation allowed, 1F1B at b = 1, the schedule that keeps the fewest micro-batches).
"""
from __future__ import annotations


from simulator.schedules import build_schedule

from ..cluster import ClusterSpec
from ..model import ModelSpec
from ..plan import default_placement
from . import clock
from .baselines import megatron_uniform
from .cpsat import INFEASIBLE, solve
from .problem import Candidate, build_problem

SEARCH_TIME_LIMIT = 2.0
MIN_SOLVE = 0.05  # below this much time left, a solve is not started: its answer would be "unknown"


def _budget(deadline: float | None) -> float | None:
    """CP-SAT's budget for one solve: ``SEARCH_TIME_LIMIT``, less when ``deadline`` is nearer; None
    when there is no time left to start one."""
    if deadline is None:
        return SEARCH_TIME_LIMIT
    left = deadline - clock.now()
    return min(SEARCH_TIME_LIMIT, left) if left >= MIN_SOLVE else None


def _lean_problem(model: ModelSpec, cluster: ClusterSpec, pp: int, dp: int, batch: int, seq_len: int,
                  distributed_optimizer: bool, headroom: float, tp: int = 1, sequence_parallel: bool = False):
    candidate = Candidate("1f1b", 1, 1, batch)
    schedule = build_schedule("1f1b", pp, batch, 1)
    big = cluster.with_nodes(max(cluster.nodes, -(-pp * dp * tp // cluster.gpus_per_node)))
    return build_problem(model, big, candidate, schedule, seq_len, default_placement(pp, dp, tp), dp,
                         distributed_optimizer, headroom, tp=tp, sequence_parallel=sequence_parallel)


def leanest_peak_bytes(model: ModelSpec, cluster: ClusterSpec, pp: int, dp: int, batch: int, seq_len: int,
                       distributed_optimizer: bool, tp: int = 1, sequence_parallel: bool = False,
                       deadline: float | None = None) -> float | None:
    """The smallest per-device peak memory a split reaches at this pp (bytes; the best found within
    the budget, so an upper bound), None if unknown."""
    budget = _budget(deadline)
    if budget is None:
        return None
    problem = _lean_problem(model, cluster, pp, dp, batch, seq_len, distributed_optimizer, 0.0, tp, sequence_parallel)
    solution = solve(problem, time_limit=budget, objective="memory")
    return solution.objective * problem.memory_unit if solution.found else None


def fits_at(model: ModelSpec, cluster: ClusterSpec, pp: int, dp: int, batch: int, seq_len: int,
            distributed_optimizer: bool, headroom: float, tp: int = 1, sequence_parallel: bool = False,
            deadline: float | None = None) -> bool | None:
    """Whether some split (1F1B, b = 1, recomputation allowed) fits on ``pp`` devices; None when CP-SAT
    neither found one nor proved there is none in the time it had (never read as "does not fit")."""
    if pp > model.num_pipeline_layers:
        return False
    budget = _budget(deadline)
    if budget is None:
        return None
    problem = _lean_problem(model, cluster, pp, dp, batch, seq_len, distributed_optimizer, headroom, tp,
                            sequence_parallel)
    hint = megatron_uniform(model, pp)  # fits more often than not once pp is large enough: a quick witness
    solution = solve(problem, time_limit=budget, objective="none", hint=hint)
    return True if solution.found else (False if solution.status == INFEASIBLE else None)


def explain_infeasible(model: ModelSpec, cluster: ClusterSpec, pp: int, dp: int, batch: int, seq_len: int,
                       headroom: float, distributed_optimizer: bool, gpus: list[int], tp: int = 1,
                       sequence_parallel: bool = False, deadline: float | None = None) -> str:
    """One line: what does not fit, the memory per GPU that would, and the pp that would (each as far as
    the time to ``deadline`` allows finding out)."""
    need = leanest_peak_bytes(model, cluster, pp, dp, batch, seq_len, distributed_optimizer, tp, sequence_parallel,
                              deadline)
    where = f"pp = {pp} GPUs" if tp == 1 else f"pp = {pp} tensor groups of tp = {tp}"
    parts = [f"no plan fits {model.name} on {where} of {cluster.gpu.memory_bytes / 1e9:.0f} GB "
             f"({headroom:.0%} headroom)"]
    if need is not None:
        parts.append(f"the leanest split needs {need / 1e9:.1f} GB per GPU, i.e. GPUs of at least "
                     f"{need / (1 - headroom) / 1e9:.1f} GB")
    args = (dp, batch, seq_len, distributed_optimizer, headroom, tp, sequence_parallel, deadline)
    unknown = ("the time limit ran out before finding the pp that would fit (raise --time-limit to find out)"
               if deadline is not None else
               f"CP-SAT could not tell within {SEARCH_TIME_LIMIT:g} s whether a deeper pipeline fits")
    lo, hi, candidate = pp, None, pp * 2
    while candidate < model.num_pipeline_layers:
        fits = fits_at(model, cluster, candidate, *args)
        if fits is None:
            return "; ".join(parts + [unknown])
        if fits:
            break
        lo, candidate = candidate, candidate * 2
    candidate = min(candidate, model.num_pipeline_layers)
    fits = fits_at(model, cluster, candidate, *args)
    if fits is None:
        return "; ".join(parts + [unknown])
    if fits:
        hi = candidate
    if hi is not None:
        while hi - lo > 1:  # the leanest peak only shrinks as devices are added
            mid = (lo + hi) // 2
            fits = fits_at(model, cluster, mid, *args)
            if fits is None:
                break  # hi fits; whether fewer would is unknown: hi is still good advice
            lo, hi = (lo, mid) if fits else (mid, hi)
        parts.append(f"or use --pp {hi} ({hi * dp * tp} GPUs with dp = {dp}" + (f", tp = {tp}" if tp > 1 else "")
                     + ", --nodes to match)")
    else:
        parts.append("no pipeline depth fixes it; use GPUs with more memory, a distributed optimizer or a larger dp")
    return "; ".join(parts)
