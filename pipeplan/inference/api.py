"""The serving API: resolve a serving plan, lower it, simulate it.

``simulate_serving(plan)`` for a plan with a request mix (``Plan.serving``), or
``simulate_serving(model="llama3-70b", tp=4, pp=2, microbatch_size=8, serving=ServingSpec.uniform(512, 128))``
with the layout keywords of ``pipeplan.make_plan`` (schedule default ``continuous-decode``, micro-batches
in flight default pp). ``resolve_serving`` and ``build_serving_workload`` are the two steps, for callers
that price many plans (a planner) or execute one (a validator: ``ServingResolved.passes`` says what
each micro-batch id of the schedule is).
"""
from __future__ import annotations

from pathlib import Path

from simulator.engine import simulate as simulate_workload

from ..cluster import ClusterSpec, load_cluster
from ..errors import SpecError
from ..limits import check_model, check_output_size
from ..model import ModelSpec, load_model
from ..plan import Plan
from ..specs import beside, read_schedule_csv
from .lowering import ServingResolved, build_serving_workload, check_one_pass, serving_schedule
from .metrics import ServingResult
from .passes import plan_passes
from .requests import ServingSpec

DEFAULT_SCHEDULE = "continuous-decode"


def serving_plan(model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict = "dgx-h100",
                 serving: ServingSpec | None = None, **layout) -> Plan:
    """A serving plan from a model, a cluster and ``pipeplan.make_plan``'s layout keywords.

    Defaults: schedule ``continuous-decode``, micro-batches in flight = pp (the fewest that keep a
    decode pipeline full), the request mix one class of the model's sequence length and one output token.
    """
    from ..sizing import make_plan

    layout.setdefault("schedule", DEFAULT_SCHEDULE)
    plan = make_plan(model, cluster, **layout)
    if layout.get("microbatches") is None:
        plan = plan.with_(num_microbatches=plan.pp)
    if serving is None:
        seq_len = plan.seq_len or load_model(model).seq_len
        serving = ServingSpec.uniform(seq_len, 1)
    return plan.with_(serving=serving)


def resolve_serving(plan: Plan, base_dir: str | Path = ".", model: ModelSpec | str | dict | None = None,
                    cluster: ClusterSpec | str | dict | None = None) -> ServingResolved:
    """Load what the serving ``plan`` names (spec files beside ``base_dir`` first) and check it all agrees."""
    if plan.serving is None:
        raise SpecError("plan.serving: a serving plan needs its request mix (e.g. --prompt-len 512 --output-len 128)")
    model = load_model(beside(model if model is not None else plan.model, base_dir))
    check_model(model)
    cluster = load_cluster(beside(cluster if cluster is not None else plan.cluster, base_dir), plan.nodes)
    for k in range(plan.num_stages):
        model.layer_cost(plan.stage_layers(k)[0], 1, 1, plan.tp)  # tp must divide the heads: said once, here
    passes = plan_passes(plan.serving, plan.num_microbatches, plan.microbatch_size, plan.num_stages)
    schedule = serving_schedule(plan, passes)
    if schedule is None:  # a custom CSV: forward-only, one pass per micro-batch
        path = Path(plan.schedule_csv)
        schedule = read_schedule_csv(path if path.is_absolute() else Path(base_dir) / path, "plan.schedule_csv")
        check_one_pass("a custom schedule without recurrence", passes)
    return ServingResolved(model, cluster, plan, plan.serving, passes, schedule)


def simulate_serving(plan: Plan | None = None, base_dir: str | Path = ".", model=None, cluster=None,
                     serving: ServingSpec | None = None, **layout) -> ServingResult:
    """Simulate a serving plan (see the module docstring); ``serving`` replaces the plan's request mix."""
    if plan is None:
        if model is None:
            raise TypeError("simulate_serving() needs a plan, or a model and layout keywords (see pipeplan.make_plan)")
        plan = serving_plan(model, cluster if cluster is not None else "dgx-h100", serving, **layout)
        model = cluster = None
    elif layout:
        raise TypeError(f"simulate_serving(): {', '.join(sorted(layout))} describe a plan; give them or a plan")
    elif serving is not None:
        plan = plan.with_(serving=serving)
    resolved = resolve_serving(plan, base_dir, model, cluster)
    workload = build_serving_workload(resolved)
    return ServingResult(simulate_workload(workload), workload, resolved)


def check_serving_outputs(resolved: ServingResolved, flags: list[str]) -> None:
    """Refuse charts and saved timelines of a run too large to draw (``limits`` ``output_ops``)."""
    check_output_size(len(resolved.passes.passes) * resolved.plan.num_stages, flags)
