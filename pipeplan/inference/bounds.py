"""Bounds on what the simulator can show for a serving candidate, from the layer costs, without lowering it.

A pass's F on a stage costs the sum of its layers' ``costs.layer_pass`` seconds (``stage_pass_cost``),
so a pass's *work* over the whole model, W(pass) = Σ over every layer, is the same for every cut. The
simulator runs an F op for exactly its cost, one op at a time per device, and a transfer takes at least
nothing. So, for a candidate of k slots (micro-batches in flight) whose batch g runs in slot g mod k:

* the passes of one batch run one after another (each F(0) waits for the last stage's previous pass,
  ``deps``), and the batches of one slot too: batch g's j-th pass ends no earlier than
  start(g) + Σ_{i <= j} W(pass i), start(g) being the work of the slot's earlier batches;
* the run lasts at least the busiest stage's total F time, and at least any slot's total work.

Per request (output length T) of batch g: time to first token >= start(g) + W(prefill), end-to-end
>= start(g) + Σ_{j < T} W(pass j), and (end-to-end − first token) >= Σ_{0 < j < T} W(pass j). Order
statistics keep the bounds, so the p99 of the bounds bounds the p99. Peak memory on a device is at
least its weights plus the cache one batch has written before its last pass (freed only after it).
Every time bound is scaled by 1 − 1e-9: the simulator sums the same costs in another order.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

from ..model import BLOCK, EMBEDDING, HEAD, ModelSpec
from .costs import PassShape, kv_bytes_per_token_per_layer, layer_pass, weight_bytes
from .metrics import percentile
from .passes import plan_passes
from .requests import ServingSpec

FLOAT_SLACK = 1 - 1e-9


@dataclass(frozen=True)
class BatchWork:
    """One request batch: its requests' output lengths, the running sum of its passes' work (seconds,
    whole model) and the cache tokens it has written before its last pass."""

    outputs: tuple[int, ...]
    cumulative: tuple[float, ...]
    cache_tokens: int


@dataclass(frozen=True)
class RunWork:
    """A replica's run at one tp and batch size: its batches in order, and the seconds all passes take in
    one embedding, one block and one head layer (a stage's busy time is the sum over its layers)."""

    batches: tuple[BatchWork, ...]
    layer_seconds: dict[str, float]


def _work(model: ModelSpec, cluster, tp: int, shape: PassShape) -> tuple[float, float, float]:
    return tuple(layer_pass(model, kind, cluster.gpu, cluster.intra, tp, shape).seconds
                 for kind in (EMBEDDING, BLOCK, HEAD))


@lru_cache(maxsize=64)
def run_work(model: ModelSpec, cluster, tp: int, serving: ServingSpec, requests: int, batch: int) -> RunWork:
    """The work of a replica serving ``requests`` of ``serving``'s mix in batches of ``batch`` (see the module
    docstring); which slot runs a batch does not change it."""
    passes = plan_passes(ServingSpec(serving.mix, requests), 1, batch)
    per_shape: dict[PassShape, tuple[float, float, float]] = {}
    totals = [0.0, 0.0, 0.0]
    steps: dict[int, list[float]] = {}
    tokens: dict[int, int] = {}
    for p in passes.passes:
        if p.shape not in per_shape:
            per_shape[p.shape] = _work(model, cluster, tp, p.shape)
        e, b, h = per_shape[p.shape]
        for i, x in enumerate((e, b, h)):
            totals[i] += x
        steps.setdefault(p.batch, []).append(e + model.num_layers * b + h)
        if not p.last:
            tokens[p.batch] = tokens.get(p.batch, 0) + p.shape.num_tokens
    batches = tuple(BatchWork(tuple(passes.requests[i].output_len for i in ids), tuple(accumulate(steps[g])),
                              tokens.get(g, 0)) for g, ids in enumerate(passes.batches))
    return RunWork(batches, dict(zip((EMBEDDING, BLOCK, HEAD), totals)))


@dataclass(frozen=True)
class CandidateBounds:
    """Lower bounds on a candidate's simulated run: makespan, p99 latency, TTFT and TPOT (seconds; TPOT 0
    when no request generates a second token), and peak memory per device (bytes)."""

    makespan: float
    latency_p99: float
    ttft_p99: float
    tpot_p99: float
    peak_memory: tuple[float, ...]


def candidate_bounds(model: ModelSpec, cluster, tp: int, serving: ServingSpec, requests: int, batch: int,
                     in_flight: int, layers_per_stage: tuple[int, ...]) -> CandidateBounds:
    """The bounds of one candidate (see the module docstring)."""
    work = run_work(model, cluster, tp, serving, requests, batch)
    slot_start = [0.0] * in_flight
    first, last, per_token = [], [], []
    for g, b in enumerate(work.batches):
        start = slot_start[g % in_flight]
        for t in b.outputs:
            first.append(start + b.cumulative[0])
            last.append(start + b.cumulative[t - 1])
            if t > 1:
                per_token.append((b.cumulative[t - 1] - b.cumulative[0]) / (t - 1))
        slot_start[g % in_flight] = start + b.cumulative[-1]
    busy, static, blocks = [], [], []
    start = 0
    for n in layers_per_stage:
        layers = range(start, start + n)
        start += n
        kinds = [model.layer_kind(i) for i in (layers[0], layers[-1])]
        count = {EMBEDDING: int(kinds[0] == EMBEDDING), HEAD: int(kinds[-1] == HEAD)}
        count[BLOCK] = n - count[EMBEDDING] - count[HEAD]
        busy.append(sum(count[k] * work.layer_seconds[k] for k in count))
        static.append(weight_bytes(model, layers, tp))
        blocks.append(count[BLOCK])
    cache = max(b.cache_tokens for b in work.batches) * kv_bytes_per_token_per_layer(model, tp)
    return CandidateBounds(
        makespan=FLOAT_SLACK * max(max(busy), max(slot_start)),
        latency_p99=FLOAT_SLACK * percentile(last, 0.99),
        ttft_p99=FLOAT_SLACK * percentile(first, 0.99),
        tpot_p99=FLOAT_SLACK * percentile(per_token, 0.99) if per_token else 0.0,
        peak_memory=tuple(w + cache * n for w, n in zip(static, blocks)),
    )
