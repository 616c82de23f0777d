"""``optimize``: the planner's keyword API. It lists the layouts the pins allow and searches them
(``layout_search``), or, when the pins leave one layout, runs ``search`` on it directly."""
from __future__ import annotations

from dataclasses import replace

from ..cluster import ClusterSpec, load_cluster
from ..errors import SpecError, positive_int
from ..limits import MAX_SECONDS, check_model, check_planner_size, in_range
from ..model import ModelSpec, load_model
from ..profile import Profile
from . import clock
from .candidates import schedule_variants
from .layout_search import TOP_LAYOUTS, GivenConfig, search_layouts
from .layouts import LayoutPins, enumerate_layouts
from .request import OptimizeRequest
from .result import OptimizeResult
from .search import Progress, search

SOLVER_LIMIT = 5.0  # CP-SAT seconds per candidate (deterministic) when the layout is fixed
WHOLE_SOLVER_LIMIT = 0.1  # ... and when several layouts are searched


def optimize(model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict, global_batch: int,
             pp: int | None = None, dp: int | None = None, nodes: int | None = None, seq_len: int | None = None,
             schedules: list[str] | None = None, microbatch_sizes: list[int] | None = None,
             time_limit: float | None = None, headroom: float = 0.05, distributed_optimizer: bool | None = None,
             rescore: int = 3, parallel: int | None = None, progress: Progress | None = None,
             profile: Profile | str | dict | None = None, tp: int | None = None,
             sequence_parallel: bool | None = None, gpus: int | None = None,
             compare_config: str | GivenConfig | None = None, layouts: int = TOP_LAYOUTS,
             solver_time_limit: float | None = None, blocking_p2p: bool = False,
             target: str | None = None) -> OptimizeResult:
    """Find the fastest plan that fits: layout (tp, pp, dp), schedule, chunks v, micro-batch size b and
    count m, cut points and recomputation per stage.

    The plan uses ``gpus`` GPUs (default: every GPU of the cluster's ``nodes``); tp, pp, dp,
    ``sequence_parallel`` and ``distributed_optimizer`` left None are searched (the two switches are on
    wherever they apply: never slower in the cost model, see ``layouts``), given ones are pinned.
    ``layouts``: how many layouts, in the screen's order, are searched in full (a layout whose time floor
    cannot beat the best simulated plan is skipped without counting). ``time_limit``: the whole search's
    wall-clock budget in seconds (None: none); past it the best plan found so far is returned and the
    result says so (``timed_out``). ``solver_time_limit``: CP-SAT's budget per candidate (deterministic
    seconds; default 5 for one layout, 0.1 when several are searched: there the simulator's screen, the
    usual-split starts and the polish matter more than CP-SAT's last percent, and a chunked candidate that
    stays FEASIBLE spends it all, at 4-6 s of CPU per deterministic second on llama3-70b). ``compare_config`` ("tp=8,pp=8,dp=24,b=2,v=2"): a configuration simulated as a baseline;
    the answer is never slower than it. ``parallel`` > 1 solves that many candidates at once in worker
    processes. ``profile``: measured op times and links (``pipeplan validate`` writes one) instead of
    the analytic cost model; it fixes b and the sequence length to the values it was measured at, and
    tp and dp to 1 unless pinned (it measured one tensor rank of one replica). ``target`` (an export
    target, ``pipeplan.export.EXPORTERS``): search only what it runs; "megatron" keeps to 1F1B and
    interleaved and one recomputation mode for every stage, so the plan exports as Megatron-LM arguments.
    Raises SpecError (one line) for a bad argument, and when nothing fits, saying what would.
    """
    started = clock.now()
    if time_limit is not None and not 0 < time_limit <= MAX_SECONDS:  # inf is "no limit": leave it None
        raise SpecError(f"time_limit: must be in (0, {MAX_SECONDS:.0f}] seconds (a week) (got {time_limit})")
    positive_int("layouts", layouts)
    spec, cl, count, grown = _gpus_and_cluster(model, cluster, nodes, gpus)
    if profile is not None:  # a profile holds one tensor rank's measured costs at tp = 1, one replica
        tp, dp = (1 if tp is None else tp), (1 if dp is None else dp)
    pins = LayoutPins(count, tp, pp, dp, sequence_parallel, distributed_optimizer)
    compare = GivenConfig.parse(compare_config) if isinstance(compare_config, str) else compare_config
    if compare is not None and target is not None:
        _check_compare_target(compare, target)
    positive_int("global_batch", global_batch)
    _check_size(spec, cl, global_batch, count, tp, pp, dp, microbatch_sizes, schedules)
    found = enumerate_layouts(spec, cl, global_batch, pins)
    first = found[0]
    if solver_time_limit is None:
        solver_time_limit = SOLVER_LIMIT if len(found) == 1 and compare is None else WHOLE_SOLVER_LIMIT
    base = OptimizeRequest.create(
        model, cluster, global_batch, pp=first.pp, dp=first.dp,
        nodes=nodes if nodes is not None else (cl.nodes if grown else None),
        seq_len=seq_len, schedules=schedules, microbatch_sizes=microbatch_sizes, time_limit=solver_time_limit,
        headroom=headroom, distributed_optimizer=first.distributed_optimizer, rescore=rescore, jobs=parallel,
        profile=profile, tp=first.tp, sequence_parallel=first.sequence_parallel, blocking_p2p=blocking_p2p,
        target=target)
    if len(found) == 1 and compare is None:
        deadline = None if time_limit is None else started + time_limit
        result = search(replace(base, deadline=deadline), progress)  # base already has the one layout
        timed_out = deadline is not None and (clock.now() > deadline or base.pace.cut)
        return replace(result, timed_out=timed_out, search_time=clock.now() - started)
    return search_layouts(base, pins, float("inf") if time_limit is None else time_limit - (clock.now() - started),
                          layouts, compare, progress)


def _check_compare_target(compare: GivenConfig, target: str) -> None:
    """A configuration to compare against is a possible answer, so it must run on the target as well."""
    from ..export import export_target

    runs = export_target(target, "target").schedules
    schedule = compare.schedule or ("interleaved" if compare.v > 1 else "1f1b")
    if runs is not None and schedule not in runs:
        raise SpecError(f"--compare-config: schedule={schedule} does not run on --target {target} "
                        f"({' and '.join(runs)} do)")


def _check_size(spec: ModelSpec, cluster: ClusterSpec, global_batch: int, gpus: int, tp: int | None, pp: int | None,
                dp: int | None, microbatch_sizes: list[int] | None, schedules: list[str] | None) -> None:
    """Refuse a search too large to run (``pipeplan.limits``), before the layouts are listed."""
    in_range("global_batch", global_batch, "global_batch")
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp)):
        if value is not None:
            positive_int(name, value)
    for b in microbatch_sizes or ():
        positive_int("microbatch_sizes", b)
    check_model(spec)
    chunks = max(v for _, v in schedule_variants(schedules))
    check_planner_size(spec, global_batch, gpus, cluster.gpus_per_node, microbatch_sizes, chunks, tp, pp, dp)


def _gpus_and_cluster(model, cluster, nodes: int | None, gpus: int | None) -> tuple[ModelSpec, ClusterSpec, int, bool]:
    """The model, the cluster with enough nodes, how many GPUs the plan uses (``gpus``, else all) and
    whether the cluster grew beyond its own node count to hold them."""
    spec = load_model(model)
    if gpus is not None:
        positive_int("gpus", gpus)
    if nodes is not None:
        positive_int("nodes", nodes)
    base = load_cluster(cluster, nodes)
    if gpus is None:
        return spec, base, base.num_gpus, False
    needed = -(-gpus // base.gpus_per_node)
    if nodes is not None and needed > nodes:
        raise SpecError(f"gpus: {gpus} GPUs need {needed} node(s) of {base.gpus_per_node} but --nodes is {nodes}; "
                        "raise --nodes or lower --gpus")
    grown = nodes is None and needed > base.nodes
    return spec, base.with_nodes(needed) if grown else base, gpus, grown
