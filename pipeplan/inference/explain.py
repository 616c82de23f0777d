"""Why a serving plan is fast or slow, in the cost model's own terms, for ``optimize --inference``'s answer.

``anatomy`` takes one pass of a simulated plan (its median decode step, or its first prefill) through
every stage and splits what the cost model charges for it (``costs.layer_pass``, the same per-layer
prices the simulator's ops are made of) into named terms, summed over the stages a token crosses:

* ``hbm``: the bytes the GEMMs and the attention read, at HBM bandwidth: every weight matrix of the
  layers (2 bytes per parameter on one tensor rank) and the KV cache of every request's context;
* ``flops``: the same GEMMs' and attention's FLOPs at the GEMM ceiling (peak x ``max_fraction``);
  the larger of the two says whether the pass is memory- or compute-bound (a roofline);
* ``tensor_parallel``: the ring all-reduces inside the layers (``costs.tp_seconds``);
* ``launches``: the per-layer kernel overhead (``GPUSpec.op_overhead_s``);
* ``hops``: the pipeline transfers between stages and the token back to the first one;
* ``other``: the rest of the priced trip (elementwise kernels, GEMM tiles above their floor).

``explain`` compares the chosen plan with the best plans of other layouts term by term and says
which term decides, with the numbers; nothing in it is fixed text about which layout wins.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..costs import tp_seconds
from ..model import BLOCK, ModelSpec
from .costs import kv_bytes_per_token_per_layer
from .metrics import ServingResult
from .passes import Pass


@dataclass(frozen=True)
class Anatomy:
    """One pass through every stage of a plan, per tensor rank: bytes, FLOPs and seconds by term."""

    step: Pass
    weight_bytes: float
    cache_bytes: float
    flops: float
    hbm: float
    flops_floor: float
    tensor_parallel: float
    launches: float
    hops: float
    trip: float  # what the simulator's ops and transfers add up to for this pass, nothing waited for
    busiest_stage: float

    @property
    def roofline(self) -> float:
        return max(self.hbm, self.flops_floor)

    @property
    def other(self) -> float:
        return self.trip - self.roofline - self.tensor_parallel - self.launches - self.hops

    @property
    def memory_bound(self) -> bool:
        return self.hbm >= self.flops_floor


def _layer_terms(model: ModelSpec, tp: int, index: int, step: Pass) -> tuple[float, float, float, tuple]:
    """(weight bytes, cache bytes, FLOPs, TP collectives) of layer ``index`` for ``step`` on one tensor rank."""
    shape = step.shape
    kind = model.layer_kind(index)
    n = shape.requests if index == model.num_pipeline_layers - 1 else shape.num_tokens
    c = model.layer_cost(index, n, 1, tp, loss=False)
    weights = sum(2.0 * cols * k * batch for _, cols, k, batch in c.gemms)
    flops = sum(2.0 * m * cols * k * batch for m, cols, k, batch in c.gemms)
    cache = 0.0
    if kind == BLOCK:
        cache = sum(shape.context) * kv_bytes_per_token_per_layer(model, tp)
        # The attention core: QK^T and AV over each request's context (dense counting, as costs.attention_seconds).
        flops += sum(4 * t * ctx * model.q_dim / tp for t, ctx in zip(shape.tokens, shape.context))
    return weights, cache, flops, c.tp_forward


def representative_step(result: ServingResult, prefill: bool = False) -> Pass | None:
    """The first batch's prefill, or its median decode step (None when no request decodes)."""
    first = result.resolved.passes.passes[0].batch
    steps = [p for p in result.resolved.passes.passes if p.batch == first and (p.step == 0) == prefill]
    return steps[len(steps) // 2] if steps else None


def anatomy(result: ServingResult, step: Pass) -> Anatomy:
    """The terms of ``step`` through every stage of ``result``'s plan (see the module docstring)."""
    r = result.resolved
    model, gpu, plan = r.model, r.cluster.gpu, r.plan
    costs = result.workload.pass_stages[result.workload.pass_class[step.microbatch]]
    network, device = result.workload.network, r.schedule.stage_to_device
    weights = cache = flops = tp_time = 0.0
    for index in range(model.num_pipeline_layers):
        w, c, f, collectives = _layer_terms(model, plan.tp, index, step)
        weights, cache, flops = weights + w, cache + c, flops + f
        tp_time += tp_seconds(tuple((x, 1) for x in collectives), plan.tp, r.cluster.intra)
    stages = len(costs)
    hops = sum(network.transfer_seconds(device[s], device[s + 1], costs[s].send_forward_bytes) for s in range(stages - 1))
    if not step.last:
        hops += network.transfer_seconds(device[-1], device[0], costs[-1].send_forward_bytes)
    return Anatomy(
        step=step, weight_bytes=weights, cache_bytes=cache, flops=flops,
        hbm=(weights + cache) / gpu.hbm_bandwidth, flops_floor=flops / (gpu.peak_flops * gpu.max_fraction),
        tensor_parallel=tp_time, launches=gpu.op_overhead_s * model.num_pipeline_layers, hops=hops,
        trip=sum(c.forward for c in costs) + hops, busiest_stage=max(c.forward for c in costs),
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def signed(seconds: float) -> str:
    return ("+" if seconds >= 0 else "-") + ms(abs(seconds))


def gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:,.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:,.2f} MB"


def _scaled(value: float, unit: str) -> str:
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:,.2f} {prefix}{unit}"
    return f"{value:,.2f} {unit}"


def layout_text(result: ServingResult) -> str:
    plan = result.plan
    return f"tp{plan.tp} pp{plan.pp}" + (f" dp{plan.dp}" if plan.dp > 1 else "")


def regime_line(a: Anatomy, gpu_bandwidth: float, kind: str) -> str:
    """Whether ``a``'s pass is memory- or compute-bound, with both sides of the roofline."""
    def ratio(big: float, small: float) -> str:
        return (f"{big / small:,.0f}x" if big >= 10 * small else f"{big / small:.1f}x") if small > 0 else "all of it"

    reads = (f"{gb(a.weight_bytes)} of weights + {gb(a.cache_bytes)} of KV cache per tensor rank over the "
             f"pipeline = {ms(a.hbm)} at {_scaled(gpu_bandwidth, 'B/s')}")
    work = f"{_scaled(a.flops, 'FLOP')} per tensor rank = {ms(a.flops_floor)} at the GEMM ceiling"
    shape = a.step.shape
    what = (f"one token for each of {shape.requests} request(s)" if kind == "decode" else
            f"{shape.requests} prompt(s), {shape.num_tokens:,} tokens")
    if a.memory_bound:
        return (f"{kind} is memory-bound: a {kind} step ({what}) reads every weight and the whole KV cache from "
                f"HBM, {reads}, against {work} ({ratio(a.hbm, a.flops_floor)})")
    return (f"{kind} is compute-bound: a {kind} step ({what}) is {work}, against {reads} "
            f"({ratio(a.flops_floor, a.hbm)})")


def tpot_line(result: ServingResult, a: Anatomy) -> str:
    plan = result.plan
    tpot = result.tpot.mean
    waited = tpot - a.trip
    parts = [f"HBM {ms(a.hbm)}" if a.memory_bound else f"FLOPs {ms(a.flops_floor)}",
             f"TP all-reduces {ms(a.tensor_parallel)}", f"kernel launches {ms(a.launches)}",
             f"hops {ms(a.hops)}", f"other kernels {ms(a.other)}"]
    wait = (f" + {ms(waited)} waiting for a stage (busiest {ms(a.busiest_stage)} per pass, "
            f"{plan.num_microbatches} micro-batch(es) in flight on {plan.pp} stage(s))" if waited > 0.01 * tpot else "")
    return (f"TPOT mean {ms(tpot)} = a token's trip through {plan.pp} stage(s) {ms(a.trip)} ({', '.join(parts)})"
            + wait)


def throughput_line(result: ServingResult) -> str:
    plan = result.plan
    decoding = plan.dp * min(plan.num_microbatches * plan.microbatch_size, len(result.resolved.passes.requests))
    ttft, steps, tpot = last_request(result)
    decode = f" + {steps} decode steps of {ms(tpot)}" if steps else ""
    return (f"throughput {result.tokens_per_second:,.0f} tokens/s = {result.output_tokens:,} tokens over "
            f"{ms(result.makespan)}, up to {decoding} request(s) in flight ({plan.dp} replica(s) x "
            f"{plan.num_microbatches} micro-batch(es) of {plan.microbatch_size}); the run ends with a request "
            f"whose first token came at {ms(ttft)}{decode}")


def last_request(result: ServingResult) -> tuple[float, int, float]:
    """The request that ends the run: its first token's time, its decode steps and their mean time."""
    ends = result.end_to_end_times
    i = max(range(len(ends)), key=ends.__getitem__)
    first, steps = result.first_token_times[i], result.resolved.passes.requests[i].output_len - 1
    return first, steps, (ends[i] - first) / steps if steps else 0.0


# Why a term differs between two plans, by what differs between them.
def _reason(term: str, mine, other) -> str:
    if term in ("HBM", "FLOPs") and mine.tp != other.tp:
        return f"tp{other.tp} splits each layer's {'bytes' if term == 'HBM' else 'FLOPs'} {other.tp} ways, not {mine.tp}"
    if term in ("HBM", "FLOPs") and mine.microbatch_size != other.microbatch_size:
        return f"{other.microbatch_size} request(s) per pass, not {mine.microbatch_size}"
    if term in ("HBM", "FLOPs"):
        return "pp does not cut a trip's work: a token crosses every stage"
    if term == "TP all-reduces":
        return (f"2 ring all-reduces per block over {other.tp} rank(s), 2(t-1) steps each"
                if other.tp > 1 else "no tensor parallelism")
    if term == "hops":
        return f"{other.pp - 1} pipeline hop(s) per pass"
    if term == "waiting":
        return (f"{other.num_microbatches} micro-batch(es) of {other.microbatch_size} take turns on {other.pp} "
                "stage(s), later batches wait for a slot")
    return "per-layer kernel launches and elementwise kernels"


def _terms(a: Anatomy, waited: float) -> dict[str, float]:
    return {("HBM" if a.memory_bound else "FLOPs"): a.roofline, "TP all-reduces": a.tensor_parallel,
            "hops": a.hops, "waiting": waited, "launches and other kernels": a.launches + a.other}


def _differences(mine: dict[str, float], theirs: dict[str, float], chosen, other, scale: float) -> str:
    rows = sorted(((name, theirs.get(name, 0.0), mine.get(name, theirs.get(name, 0.0))) for name in theirs),
                  key=lambda row: -abs(row[1] - row[2]))
    said = [f"{name} {ms(t)} ({signed(t - m)}: {_reason(name, chosen.plan, other.plan)})"
            for name, t, m in rows[:2] if abs(t - m) > 0.02 * scale]
    return ", ".join(said) if said else "the same costs"


def compare_line(chosen: ServingResult, other: ServingResult) -> str:
    """``other`` against the chosen plan: its figures, then the part of the run that differs more (the last
    request's first token or its decode steps) split into the terms that differ most."""
    c_first, c_steps, c_tpot = last_request(chosen)
    o_first, o_steps, o_tpot = last_request(other)
    head = (f"vs {layout_text(other)} b={other.plan.microbatch_size} k={other.plan.num_microbatches}: "
            f"{other.tokens_per_second:,.0f} tokens/s ({other.tokens_per_second / chosen.tokens_per_second - 1:+.0%}), "
            + (f"TPOT mean {ms(other.tpot.mean)}, " if o_steps else "")
            + f"TTFT p50 {ms(other.ttft.p50)}, latency p99 {ms(other.latency.p99)}; "
            f"its run ends at {ms(other.makespan)} ({signed(other.makespan - chosen.makespan)}): first token "
            f"{ms(o_first)} ({signed(o_first - c_first)})")
    parts = [head + (f" + {o_steps} steps of {ms(o_tpot)} ({signed(o_tpot - c_tpot)})" if o_steps else "")]
    pre_a = anatomy(chosen, representative_step(chosen, prefill=True))
    pre_b = anatomy(other, representative_step(other, prefill=True))
    parts.append("prefill " + _differences(_terms(pre_a, c_first - pre_a.trip), _terms(pre_b, o_first - pre_b.trip),
                                           chosen, other, max(c_first, o_first)))
    if c_steps and o_steps:
        dec_a, dec_b = anatomy(chosen, representative_step(chosen)), anatomy(other, representative_step(other))
        parts.append("per token " + _differences(_terms(dec_a, c_tpot - dec_a.trip), _terms(dec_b, o_tpot - dec_b.trip),
                                                 chosen, other, max(c_tpot, o_tpot)))
    return "; ".join(parts)


def explain(chosen: ServingResult, others: list[ServingResult]) -> list[str]:
    """Lines saying why ``chosen`` is chosen over ``others`` (the best plans of other layouts), from the numbers."""
    gpu = chosen.resolved.cluster.gpu
    lines = []
    decode = representative_step(chosen)
    if decode is not None:
        a = anatomy(chosen, decode)
        lines += [regime_line(a, gpu.hbm_bandwidth, "decode"), tpot_line(chosen, a)]
    lines.append(regime_line(anatomy(chosen, representative_step(chosen, prefill=True)), gpu.hbm_bandwidth, "prefill"))
    lines.append(throughput_line(chosen))
    lines += [compare_line(chosen, other) for other in others]
    return lines
