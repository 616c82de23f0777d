"""``optimize``: the planner's keyword API; it builds an ``OptimizeRequest`` and runs ``search`` on it."""
from __future__ import annotations

from ..cluster import ClusterSpec
from ..model import ModelSpec
from ..profile import Profile
from .request import OptimizeRequest
from .result import OptimizeResult
from .search import Progress, search


def optimize(model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict, global_batch: int,
             pp: int | None = None, dp: int = 1, nodes: int | None = None, seq_len: int | None = None,
             schedules: list[str] | None = None, microbatch_sizes: list[int] | None = None,
             time_limit: float = 5.0, headroom: float = 0.05, distributed_optimizer: bool = False,
             rescore: int = 3, parallel: int | None = None, progress: Progress | None = None,
             profile: Profile | str | dict | None = None, tp: int = 1,
             sequence_parallel: bool = False) -> OptimizeResult:
    """Find the fastest plan that fits: cut points, recomputation per stage, schedule, b, m and v.

    ``time_limit`` is each candidate's CP-SAT budget (deterministic seconds); ``headroom`` the share
    of GPU memory kept free; ``parallel`` > 1 solves that many candidates at once in worker processes
    (at most 8; worth it on an idle machine with that many cores). Raises SpecError (one line) for a
    bad argument, and when nothing fits, saying how much memory per GPU or how many pipeline devices
    would be needed.

    ``profile``: measured op times and links (``pipeplan validate`` writes one) instead of the analytic
    cost model, for the planner's objective and the simulator that judges. A profile is measured at one
    micro-batch size and sequence length, so those are fixed to its values; memory stays the model's.
    ``tp`` (with ``sequence_parallel``) pins the tensor-parallel degree: costs and memory are one tensor
    rank's, and pp defaults to all GPUs / (tp·dp).
    """
    request = OptimizeRequest.create(
        model, cluster, global_batch, pp=pp, dp=dp, nodes=nodes, seq_len=seq_len, schedules=schedules,
        microbatch_sizes=microbatch_sizes, time_limit=time_limit, headroom=headroom,
        distributed_optimizer=distributed_optimizer, rescore=rescore, jobs=parallel, profile=profile, tp=tp,
        sequence_parallel=sequence_parallel)
    return search(request, progress)
