"""Validating a serving plan: what is refused before it runs, its memory, and its report.

A serving plan (``Plan.serving``) runs on pipeplan's runtime (``validator.serving_run``): prefill and
decode passes with a real KV cache, one process per pipeline device. Refused before anything starts:
tp or dp above 1 and blocking sends (as for training), torch's runtime (its schedules train), a
``--scale`` other than 1 (the request mix fixes the shapes), a request mix of more than one class (a
batch's requests then differ in length, which the runtime does not pad).

The report has the training report's sections (``measured``, ``predicted``, ``apriori``: bubble,
iteration time = the whole mix served once, busy time, timeline) and in each a ``serving`` part:
output tokens per second, time to first token, time per output token and end-to-end latency
(``inference.metrics``, applied to the measured timeline as to a simulated one). The calibrated
prediction is the serving workload with every F priced at its own replayed mean (each pass has its
shape: a prefill, or a decode step whose cache is one token longer than the last) and the measured
links; the a-priori one is the cost model on the cluster spec.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from simulator.engine import SimResult, simulate
from simulator.timeline import Timeline, bubble_fraction, busy_time, iteration_time
from simulator.workload import Workload

from ..errors import SpecError
from ..inference.api import resolve_serving
from ..inference.lowering import ServingResolved, build_serving_workload
from ..inference.metrics import ServingResult
from ..plan import Plan
from .footprint import BF16_BYTES, FLOAT32_BYTES, RankBytes
from .measurements import Measurements

TOKEN_BYTES = 8  # the runtime sends token ids as int64


def check_serving_plan(plan: Plan, base: Path, runtime: str, scale: float) -> ServingResolved:
    """The serving ``plan`` resolved, or a one-line ``SpecError`` saying why the validator cannot run it."""
    if runtime == "torch":
        raise SpecError("--runtime torch: torch.distributed.pipelining's schedules train; a serving plan runs on "
                        "pipeplan's runtime (--runtime pipeplan)")
    if scale != 1:
        raise SpecError("--scale: a serving plan runs at its request mix's sizes; leave --scale out (shorten the "
                        "prompts or outputs in the plan instead)")
    if len(plan.serving.mix) != 1:
        raise SpecError(f"plan.serving.mix: the validator serves one request class (every request of a batch the "
                        f"same length); this plan mixes {plan.serving.mix_text()}")
    return resolve_serving(plan, base)


def serving_rank_bytes(r: ServingResolved, on_gpu: bool) -> list[RankBytes]:
    """Per rank: its stages' weights, the KV caches of every slot at their full length, and a prefill's
    activations (one block's, 4 x the tokens x FFN width, the boundary in and out, the last positions'
    logits), at the run's element size; the build's float32 draws besides (as ``footprint.rank_bytes``)."""
    element = BF16_BYTES if on_gpu else FLOAT32_BYTES
    model, plan = r.model, r.plan
    longest = max(c.prompt_len + c.output_len for c in r.serving.mix)
    batch = max(len(ids) for ids in r.passes.batches)
    tokens = batch * max(c.prompt_len for c in r.serving.mix)
    found = []
    for device in range(plan.pp):
        params = cache = 0.0
        for stage in r.schedule.stages_of(device):
            layers = plan.stage_layers(stage)
            params += sum(model.layer_cost(i, 1, 1).params for i in layers)
            blocks = sum(model.layer_kind(i) == "block" for i in layers)
            cache += r.passes.streams * batch * longest * blocks * 2 * (model.kv_heads or model.heads) \
                * model.head_size * element
        working = (tokens * (4 * model.ffn_hidden + 2 * model.hidden) + batch * model.vocab) * element
        on_device = element * params + cache + working
        draws = FLOAT32_BYTES * params
        found.append(RankBytes(device=on_device, host=draws + (FLOAT32_BYTES * params if on_gpu else on_device)))
    return found


def measured_result(timeline: Timeline, workload: Workload, resolved: ServingResolved) -> ServingResult:
    """The serving figures of a measured iteration, by the same definitions as a simulated run's."""
    busy = busy_time(timeline)
    total = iteration_time(timeline)
    sim = SimResult(timeline, total, bubble_fraction(timeline), [1 - b / total if total > 0 else 0.0 for b in busy],
                    busy, [], [], [], [], [])
    return ServingResult(sim, workload, resolved)


def calibrated_workload(workload: Workload, m: Measurements, resolved: ServingResolved) -> Workload:
    """``workload`` with each F priced at its replayed mean, the bytes the run sends and the measured links."""
    element = FLOAT32_BYTES if m.profile.dtype == "float32" else BF16_BYTES
    last = resolved.schedule.num_stages - 1
    classes = []
    for mb in range(resolved.passes.num_microbatches):
        p = resolved.passes.by_microbatch.get(mb)
        base = workload.pass_stages[workload.pass_class[mb]]
        sent = [TOKEN_BYTES * p.shape.requests if s == last else element * p.shape.num_tokens * resolved.model.hidden
                for s in range(len(base))] if p else [c.send_forward_bytes for c in base]
        classes.append(tuple(replace(c, forward=m.pass_costs[s][mb], send_forward_bytes=sent[s])
                             for s, c in enumerate(base)))
    return replace(workload, stages=classes[0], pass_class=tuple(range(len(classes))), pass_stages=tuple(classes),
                   network=m.profile.network(workload.network))


def serving_figures(result: ServingResult) -> dict[str, Any]:
    return {"tokens_per_second": result.tokens_per_second, "ttft": result.ttft.to_dict(),
            "tpot": result.tpot.to_dict(), "latency": result.latency.to_dict()}


def _section(result: ServingResult) -> dict[str, Any]:
    timeline = result.sim.timeline
    total, busy = iteration_time(timeline), busy_time(timeline)
    return {"bubble_fraction": bubble_fraction(timeline), "iteration_time": total, "busy_time": busy,
            "device_bubble_fraction": [1 - b / total if total > 0 else 0.0 for b in busy],
            "serving": serving_figures(result), "timeline": timeline.to_dict()}


def _median_distribution(ds: Sequence[dict]) -> dict:
    return {k: statistics.median(d[k] for d in ds) if all(d[k] is not None for d in ds) else None
            for k in ("mean", "p50", "p99")}


def measured_serving_section(results: Sequence[ServingResult]) -> dict[str, Any]:
    """Medians over the kept iterations; the timeline shown is the iteration closest to the median time."""
    times = [r.makespan for r in results]
    median_time = statistics.median(times)
    shown = min(range(len(results)), key=lambda k: abs(times[k] - median_time))
    section = _section(results[shown])
    figures = [serving_figures(r) for r in results]
    p = results[0].sim.timeline.num_devices
    busy = [statistics.median(r.sim.busy_time[d] for r in results) for d in range(p)]
    section.update(
        shown_iteration=shown, iteration_time=median_time,
        bubble_fraction=statistics.median(r.sim.bubble_fraction for r in results), busy_time=busy,
        device_bubble_fraction=[1 - b / median_time for b in busy],
        serving={"tokens_per_second": statistics.median(f["tokens_per_second"] for f in figures),
                 **{k: _median_distribution([f[k] for f in figures]) for k in ("ttft", "tpot", "latency")}},
        iterations=[{"iteration_time": r.makespan, "bubble_fraction": r.sim.bubble_fraction,
                     "tokens_per_second": r.tokens_per_second, "foreign_cores": r.sim.timeline.meta.get("foreign_cores"),
                     **{k: r.sim.timeline.meta[k] for k in ("run_wait", "calib_wait", "run_others", "calib_others",
                                                            "disturbance") if k in r.sim.timeline.meta}}
                    for r in results],
    )
    return section


def _pct(predicted: float | None, measured: float | None) -> float | None:
    return None if not predicted or not measured else 100 * (predicted - measured) / measured


def serving_errors(prediction: dict[str, Any], measured: dict[str, Any]) -> dict[str, float | None]:
    p, m = prediction["serving"], measured["serving"]
    return {
        "bubble_points": 100 * (prediction["bubble_fraction"] - measured["bubble_fraction"]),
        "iteration_time_pct": _pct(prediction["iteration_time"], measured["iteration_time"]),
        "tokens_per_second_pct": _pct(p["tokens_per_second"], m["tokens_per_second"]),
        "ttft_p50_pct": _pct(p["ttft"]["p50"], m["ttft"]["p50"]),
        "tpot_mean_pct": _pct(p["tpot"]["mean"], m["tpot"]["mean"]),
        "latency_p99_pct": _pct(p["latency"]["p99"], m["latency"]["p99"]),
    }


def serving_predictions(m: Measurements, base_dir: str | Path | None = None) -> tuple[dict, dict, list[ServingResult]]:
    """(calibrated, a-priori) sections and the measured iterations' figures of a serving run (its spec files
    beside ``base_dir``, default the run's plan folder)."""
    resolved = resolve_serving(m.plan, base_dir or m.base_dir)
    workload = build_serving_workload(resolved)
    measured = [measured_result(t, workload, resolved) for t in m.iterations]
    calibrated_w = calibrated_workload(workload, m, resolved)
    sections = []
    for w, label in ((calibrated_w, "predicted (calibrated)"), (workload, "a priori")):
        result = ServingResult(simulate(w), w, resolved)
        result.sim.timeline.meta["source"] = label
        sections.append(_section(result))
    return sections[0], sections[1], measured


def build_serving_report(m: Measurements, kind: str, version: int) -> dict[str, Any]:
    """The report of a finished serving run (see the module docstring)."""
    predicted, apriori, results = serving_predictions(m)
    measured = measured_serving_section(results)
    raw = m.to_dict()
    return {
        "kind": kind, "version": version, "plan": raw["plan"], "run": raw["run"],
        "measured": measured, "predicted": predicted, "apriori": apriori,
        "errors": {"predicted": serving_errors(predicted, measured), "apriori": serving_errors(apriori, measured)},
        "profile": raw["profile"], "measured_iterations": raw["measured_iterations"], "losses": raw["losses"],
        "serving_run": raw["serving_run"],
    }

