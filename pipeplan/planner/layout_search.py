"""The whole-configuration search: which layout (tp, pp, dp), then everything ``search`` chooses inside it.

``search_layouts`` runs these steps over the layouts ``enumerate_layouts`` allows:

1. *floors*: a layout whose static memory floor is above the usable memory is dropped (no split fits);
   the others get their ``time_floor``, a lower bound on any of their simulated plans;
2. *screen* (``screen``): every remaining layout gets a quick plan (the uniform split under 1F1B and
   under ZB-V, the smallest micro-batch, the least recomputation that fits), simulated unless its memory
   surely does not fit or its bound (valid for the simulated time) cannot beat the fastest fitting plan
   simulated so far; in order of ``screen_order`` (the quick plans' bounds, or the floor with a 1F1B fill
   where larger), so that the best screens come first and a time limit stops the screen after the
   likeliest ones; a layout whose floor cannot beat a fitting screen is not screened (PRUNED);
3. *full search*: in order of the screen's time (a layout whose quick plans were not simulated or did
   not fit, by its ``screen_order``; one none of whose quick plans may fit memory last), ``search`` runs on
   a layout unless its floor is not below the best simulated plan so far (a valid
   skip) or ``top`` layouts have already been searched to a plan (the heuristic stop: the screen's
   order is the judge of which layouts deserve a search; the record says which were skipped so); the
   best simulated plan so far is the search's ``incumbent``, so its candidates whose simulated-time
   bound cannot beat it are pruned, and a layout none of whose candidates can is recorded PRUNED;
4. *answer*: the fastest simulated plan among everything simulated (screens, searches and the given
   configuration, ``--compare-config``), with the record of every layout, against the baselines of its
   own layout and candidate (scored once, here: the searches leave them out).

``time_limit`` bounds the whole search in wall-clock seconds (``OptimizeRequest.deadline``, on
``clock.now``): once a fitting plan is in hand, no quick plan, screen, layout search or optional step of
a running search starts past it, nor a simulation that would end past it at the pace the search's
simulations have shown (``clock.Pace``). Screening goes on while no plan fits yet, so a time-out never
turns into "no plan fits". Without a time-out the answer depends on the inputs only (every step is
deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import OutOfTime, SpecError
from . import clock
from .cpsat import Solution
from .layouts import Layout, LayoutPins, enumerate_layouts, memory_floor, sequence_parallel_choices, time_floor
from .problem import Candidate
from .refine import fits_within
from .request import OptimizeRequest
from .result import LayoutRecord, OptimizeResult, Scored
from .screen import SCREEN_ORDER, least_recompute, quick_plans, screen_estimate, screen_order, screen_plan
from .search import Dominated, Progress, search
from .starts import candidate_ops, score_baselines

TOP_LAYOUTS = 3  # layouts searched in full (those the screen ranks first), besides the valid skips
LAYOUT_POLISHED = 1  # proposals polished per layout searched (a pinned layout's search polishes two)


@dataclass(frozen=True)
class GivenConfig:
    """A configuration to compare against (``--compare-config tp=8,pp=8,dp=24,b=2,v=2``): Megatron's
    uniform split under interleaved (v > 1) or 1F1B, the least recomputation that fits unless ``rc`` is given."""

    tp: int
    pp: int
    dp: int
    b: int
    v: int = 1
    schedule: str | None = None
    rc: str | None = None

    @classmethod
    def parse(cls, text: str) -> "GivenConfig":
        fields = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            key = key.strip()
            if key not in ("tp", "pp", "dp", "b", "v", "schedule", "rc") or not value.strip():
                raise SpecError(f"--compare-config: {part!r} is not KEY=VALUE with KEY one of tp, pp, dp, b, v, "
                                "schedule, rc (e.g. tp=8,pp=8,dp=24,b=2,v=2)")
            fields[key] = value.strip()
        missing = [k for k in ("tp", "pp", "dp", "b") if k not in fields]
        if missing:
            raise SpecError(f"--compare-config: give {', '.join(missing)} (e.g. tp=8,pp=8,dp=24,b=2,v=2)")
        try:
            ints = {k: int(v) for k, v in fields.items() if k in ("tp", "pp", "dp", "b", "v")}
        except ValueError:
            raise SpecError(f"--compare-config: tp, pp, dp, b and v are whole numbers (got {text!r})") from None
        if any(v < 1 for v in ints.values()):
            raise SpecError(f"--compare-config: tp, pp, dp, b and v must be ≥ 1 (got {text!r})")
        if fields.get("rc", "none") not in SCREEN_ORDER:
            raise SpecError(f"--compare-config: rc={fields['rc']} is not one of {', '.join(SCREEN_ORDER)}")
        return cls(**ints, schedule=fields.get("schedule"), rc=fields.get("rc"))


def layout_request(base: OptimizeRequest, layout: Layout) -> OptimizeRequest:
    """``base`` with its layout replaced (every other choice and check as the user gave them)."""
    return replace(base, tp=layout.tp, pp=layout.pp, dp=layout.dp, sequence_parallel=layout.sequence_parallel,
                   distributed_optimizer=layout.distributed_optimizer)


def given_config(base: OptimizeRequest, pins: LayoutPins, config: GivenConfig) -> Scored:
    """The given configuration simulated on the request's model, cluster and batch (one-line errors);
    sequence parallelism and the distributed optimizer as the search would set them (the pins, else on;
    sequence parallelism off where it runs slower, ``layouts.sequence_parallel_choices``)."""
    if pins.sequence_parallel is not None:
        sp = config.tp > 1 and pins.sequence_parallel
    else:
        sp = sequence_parallel_choices(base.model, base.cluster, config.tp, base.sequence_length) == (True,)
    do = config.dp > 1 and pins.distributed_optimizer is not False
    layout = Layout(config.tp, config.pp, config.dp, sp, do)
    request = layout_request(base, layout)
    schedule = config.schedule or ("interleaved" if config.v > 1 else "1f1b")
    modes = (config.rc,) if config.rc else SCREEN_ORDER
    scored = least_recompute(request, "given config", schedule, config.v, config.b, modes)
    if scored is None:
        raise SpecError(f"--compare-config: {schedule} v={config.v} b={config.b} does not run with pp={config.pp} "
                        f"and {base.global_batch // config.dp} sequences per replica")
    return scored


def search_layouts(base: OptimizeRequest, pins: LayoutPins, time_limit: float, top: int = TOP_LAYOUTS,
                   compare: GivenConfig | None = None, progress: Progress | None = None) -> OptimizeResult:
    """Steps 1-4 of the module docstring. ``base`` carries everything but the layout."""
    started = clock.now()
    deadline = started + time_limit
    base = replace(base, deadline=deadline if deadline < float("inf") else None)  # every screen and search checks it
    if compare is not None and compare.tp * compare.pp * compare.dp != pins.gpus:
        raise SpecError(f"--compare-config: tp x pp x dp = {compare.tp * compare.pp * compare.dp} but the search "
                        f"uses {pins.gpus} GPUs")
    seq = base.sequence_length
    layouts = enumerate_layouts(base.model, base.cluster, base.global_batch, pins, seq)
    usable = base.cluster.gpu.memory_bytes * (1 - base.headroom)
    records: dict[Layout, LayoutRecord] = {}
    open_layouts = []
    for layout in layouts:
        floor_bytes = memory_floor(base.model, layout, seq)
        floor = time_floor(base.model, base.cluster, layout, base.global_batch, seq, base.microbatch_sizes)
        if floor_bytes > usable:
            records[layout] = LayoutRecord(layout, floor, "MEMORY FLOOR", memory_floor=floor_bytes)
        else:
            records[layout] = LayoutRecord(layout, floor, "SCREENED", memory_floor=floor_bytes)
            open_layouts.append(layout)
    if not open_layouts:
        least = min(records.values(), key=lambda r: r.memory_floor)
        raise SpecError(f"no layout of {pins.gpus} GPUs fits {base.model.name}: weights, gradients and optimizer state "
                        f"alone need {least.memory_floor / 1e9:.1f} GB on a GPU at best ({least.layout.label}) of "
                        f"{usable / 1e9:.1f} GB usable; " + what_would_fit(base, pins))
    # Quick plans in the order of the floors' estimate, for at most half the time limit (the other half is the
    # screen's, which a first fitting plan needs); the rest come after, by that estimate, their quick plans
    # built when (if) they are screened.
    estimate = {lay: screen_estimate(records[lay].time_floor, lay, base) for lay in open_layouts}
    quicks: dict[Layout, list] = {}
    for layout in sorted(open_layouts, key=lambda lay: (estimate[lay], lay.tp, lay.pp)):
        if clock.now() > started + time_limit / 2:
            break
        quicks[layout] = quick_plans(layout_request(base, layout))
    rank = {lay: screen_order(records[lay].time_floor, lay, base, quicks[lay]) if lay in quicks else estimate[lay]
            for lay in open_layouts}
    open_layouts.sort(key=lambda lay: (lay not in quicks, rank[lay], lay.tp, lay.pp))
    simulated: list[Scored] = []
    screens: dict[Layout, Scored] = {}
    for i, layout in enumerate(open_layouts):
        if progress:
            progress(i, len(open_layouts) + top, f"screening {layout.label}")
        best = min((s.iteration_time for s in simulated if fits_within(s, base.headroom)), default=float("inf"))
        if clock.now() > deadline and best < float("inf"):
            records[layout] = replace(records[layout], status="TIME LIMIT")
            continue
        if records[layout].time_floor >= best:  # valid: no plan of it can beat a simulated one
            records[layout] = replace(records[layout], status="PRUNED")
            continue
        if layout not in quicks:
            quicks[layout] = quick_plans(layout_request(base, layout))
        scored = screen_plan(layout_request(base, layout), quicks[layout], best, stop=lambda: clock.now() > deadline)
        if scored is not None:
            screens[layout] = scored
            simulated.append(scored)
            records[layout] = replace(records[layout], screened=scored.iteration_time,
                                      screen_fits=fits_within(scored, base.headroom))
    # A fitting screen ranks by its time; a layout whose quick plans were not simulated (or did not fit) by
    # their rank, a bound on them; one whose quick plans all surely overflow memory comes last, by floor.
    order = sorted((lay for lay in open_layouts if records[lay].status == "SCREENED"),
                   key=lambda lay: (not any(q.least_bound() < float("inf") for q in quicks[lay]),
                                    records[lay].screened if records[lay].screen_fits else rank[lay],
                                    records[lay].time_floor, lay.tp, lay.pp))
    results: list[OptimizeResult] = []
    timed_out = False
    for layout in order:
        best = min((s.iteration_time for s in simulated if fits_within(s, base.headroom)), default=float("inf"))
        record = records[layout]
        if record.time_floor >= best:
            records[layout] = replace(record, status="PRUNED")
            continue
        if len(results) >= top:
            continue  # stays SCREENED: the screen ranked it below the layouts searched
        # Past the deadline (or too near it for the layout's largest quick plan) with a fitting plan in hand (a
        # search's, or a screen's), no search starts.
        in_hand = results or any(fits_within(s, base.headroom) for s in screens.values())
        largest = max((candidate_ops(layout.pp, q.candidate) for q in quicks.get(layout, ())), default=0)
        if in_hand and layout_request(base, layout).no_time_for(largest):
            timed_out = True
            records[layout] = replace(record, status="TIME LIMIT")
            continue
        if progress:
            progress(len(open_layouts) + len(results), len(open_layouts) + top, f"searching {layout.label}")
        began = clock.now()
        try:
            result = search(replace(layout_request(base, layout), polished=LAYOUT_POLISHED,
                                    incumbent=best, baselines=False))
        except Dominated:
            records[layout] = replace(record, status="PRUNED", search_time=clock.now() - began)
            continue
        except OutOfTime:
            timed_out = True
            records[layout] = replace(record, status="TIME LIMIT", search_time=clock.now() - began)
            continue
        except SpecError:
            records[layout] = replace(record, status="NO FIT", search_time=clock.now() - began)
            continue
        results.append(result)
        simulated.append(result.chosen)
        records[layout] = replace(record, status="SEARCHED", simulated=result.iteration_time,
                                  search_time=clock.now() - began)
    timed_out = timed_out or clock.now() > deadline or base.pace.cut
    given = given_config(base, pins, compare) if compare is not None else None
    answer = _answer(base, results, screens, given, records, layouts, timed_out, clock.now() - started)
    answer = _with_baselines(base, answer, given)  # those the time limit leaves room for
    return replace(answer, timed_out=timed_out or base.pace.cut, search_time=clock.now() - started)


def what_would_fit(base: OptimizeRequest, pins: LayoutPins) -> str:
    """The advice for a pinned search that cannot fit: the unpinned layout with the lowest time floor whose
    memory floor fits, or more GPUs when none does."""
    free = LayoutPins(pins.gpus)
    usable = base.cluster.gpu.memory_bytes * (1 - base.headroom)
    if free != pins:
        seq = base.sequence_length
        fitting = [lay for lay in enumerate_layouts(base.model, base.cluster, base.global_batch, free, seq)
                   if memory_floor(base.model, lay, seq) <= usable]
        if fitting:
            best = min(fitting, key=lambda lay: time_floor(base.model, base.cluster, lay, base.global_batch, seq))
            return f"unpin the layout: {best.label} could fit (drop --tp/--pp/--dp or pin those)"
    return "use more GPUs or GPUs with more memory"


def _answer(base: OptimizeRequest, results: list[OptimizeResult], screens: dict[Layout, Scored],
            given: Scored | None, records: dict[Layout, LayoutRecord], layouts: list[Layout], timed_out: bool,
            elapsed: float) -> OptimizeResult:
    """The fastest fitting simulated plan, as an ``OptimizeResult`` of the search that found it (or of the
    fastest search, when a screen or the given configuration beat every search)."""
    fitting = [r for r in results if fits_within(r.chosen, base.headroom)]
    if not fitting:
        fitting_screens = sorted((s for s in screens.values() if fits_within(s, base.headroom)),
                                 key=lambda s: s.iteration_time)
        if not fitting_screens and timed_out:
            raise OutOfTime(f"no plan that fits was found in the time given: "
                            f"{sum(r.status == 'TIME LIMIT' for r in records.values())} layouts were not searched "
                            f"(or not to the end) for want of time; raise --time-limit or --solver-time-limit")
        if not fitting_screens:
            raise SpecError(f"no layout of {base.model.name} on these GPUs fits (every screen and search ran out "
                            f"of memory, headroom {base.headroom:.0%}); use more GPUs or GPUs with more memory")
        # Every search came back empty-handed (CP-SAT's rounded-up memory rejected what the simulator
        # fits): the fastest screen is the answer, recorded as such.
        best = _screen_result(base, fitting_screens[0])
    else:
        best = min(fitting, key=lambda r: (r.iteration_time, r.plan.tp, r.plan.pp))
    extras = [s for s in screens.values() if fits_within(s, base.headroom)]
    for other in extras:
        if other.iteration_time < best.iteration_time:
            best = replace(best, chosen=other, source="screen")
    if given is not None and fits_within(given, base.headroom) and given.iteration_time < best.iteration_time:
        best = replace(best, chosen=given, source="given config")
    others = tuple(r.chosen for r in fitting if r is not best) + tuple(extras)
    return replace(best, layouts=tuple(records[lay] for lay in layouts), timed_out=timed_out, search_time=elapsed,
                   contenders=best.contenders + others)


def _with_baselines(base: OptimizeRequest, answer: OptimizeResult, given: Scored | None) -> OptimizeResult:
    """``answer`` with the baselines of its plan's layout and candidate (the searches leave them out), and one
    of them as the plan when it simulates faster and fits: the answer is never slower than a baseline."""
    plan = answer.plan
    layout = Layout(plan.tp, plan.pp, plan.dp, plan.sequence_parallel, plan.distributed_optimizer)
    candidate = Candidate(plan.schedule, plan.chunks, plan.microbatch_size, plan.num_microbatches)
    baselines = tuple(score_baselines(layout_request(base, layout), candidate))
    for scored in baselines:
        if fits_within(scored, base.headroom) and scored.iteration_time < answer.iteration_time:
            answer = replace(answer, chosen=scored, source=scored.name)
    return replace(answer, baselines=baselines + ((given,) if given is not None else ()))


def _screen_result(base: OptimizeRequest, screen: Scored) -> OptimizeResult:
    """An answer made of a screen plan alone (no CP-SAT solution behind it)."""
    plan = screen.plan
    candidate = Candidate(plan.schedule, plan.chunks, plan.microbatch_size, plan.num_microbatches)
    solution = Solution(status="NOT SOLVED", layers_per_stage=plan.layers_per_stage,
                        recompute=tuple(r == "full" for r in plan.recompute))
    return OptimizeResult(screen, "screen", candidate, solution, screen.iteration_time, (), (), 0.0, base.headroom)
