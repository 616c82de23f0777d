"""The serving plans ``optimize --inference`` chooses among, listed and sized before any is simulated.

A candidate serves B requests on at most G GPUs with ``dp`` replicas of a ``tp`` x ``pp`` pipeline
(tp·pp·dp <= G; dp divides B, so each replica serves R = B / dp requests):

* ``tp``: a divisor of a node's GPUs that divides the model's heads and KV heads (Megatron's rule);
* ``pp``: 1 .. G / tp pipeline devices (at most the model's pipeline layers);
* ``in_flight`` k: 1 .. pp micro-batches in flight (``continuous-decode`` streams; more than pp keep
  no more devices busy, they only queue);
* ``microbatch_size`` b (requests per micro-batch): ceil(R / k), every request in flight at once,
  and every power of two below it (smaller batches wait for a slot: less KV cache, shorter decode
  steps); a candidate needs at least k batches, ceil(R / b) >= k;
* the cut: ``even`` (``plan.even_split``) and ``balanced`` (``balanced_split``, when it differs).

A candidate whose run (passes x stages) is over the ``ops`` limit is left out, and said so; the
whole space is refused up front, before any cut is priced, when all its runs together could be over
``serving_ops`` (``pipeplan.limits``): that is the most a search could simulate, whatever it prunes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from ..errors import SpecError
from ..limits import check, limit
from ..model import BLOCK, EMBEDDING, HEAD, ModelSpec
from ..plan import even_split
from ..planner.baselines import linear_partition
from ..planner.candidates import divisors
from .costs import PassShape, layer_pass
from .passes import plan_passes
from .requests import ServingSpec, request_order

EVEN, BALANCED = "even", "balanced"


@dataclass(frozen=True)
class Layout:
    """``dp`` replicas of a ``tp`` x ``pp`` pipeline, each serving ``requests`` of the B requests."""

    tp: int
    pp: int
    dp: int
    requests: int

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def label(self) -> str:
        return f"tp{self.tp} pp{self.pp}" + (f" dp{self.dp}" if self.dp > 1 else "")


@dataclass(frozen=True)
class ServingCandidate:
    """One serving plan: a layout, a cut, b requests per micro-batch and k micro-batches in flight."""

    layout: Layout
    split: str
    layers_per_stage: tuple[int, ...]
    microbatch_size: int
    in_flight: int
    passes: int  # passes per stage of one replica's run

    @property
    def ops(self) -> int:
        return self.passes * self.layout.pp

    @property
    def key(self) -> tuple:
        """The order of the listing; ties between equally good plans go to the earlier one."""
        lay = self.layout
        return (lay.gpus, lay.tp, lay.pp, lay.dp, self.split != EVEN, self.microbatch_size, self.in_flight)

    @property
    def label(self) -> str:
        return f"{self.layout.label} b={self.microbatch_size} k={self.in_flight} {self.split}"


def layouts(model: ModelSpec, gpus: int, gpus_per_node: int, batch: int, tp: int | None = None,
            pp: int | None = None, dp: int | None = None) -> list[Layout]:
    """Every layout of at most ``gpus`` GPUs serving ``batch`` requests that the pins allow (see the module
    docstring); a one-line ``SpecError`` naming the pin when they leave none."""
    tps = [t for t in divisors(gpus_per_node) if t <= gpus and _divides_heads(model, t)]
    if tp is not None and tp not in tps:
        raise SpecError(f"--tp: {tp} is not a tensor-parallel degree here; choose one of {', '.join(map(str, tps))} "
                        f"(dividing a node's {gpus_per_node} GPUs and {model.name}'s {model.heads} heads and "
                        f"{model.kv_heads or model.heads} KV heads, at most the {gpus} GPUs)")
    found = []
    for t in [tp] if tp is not None else tps:
        for p in range(1, min(gpus // t, model.num_pipeline_layers) + 1):
            for d in divisors(batch):
                if t * p * d > gpus or (pp is not None and p != pp) or (dp is not None and d != dp):
                    continue
                found.append(Layout(t, p, d, batch // d))
    if not found:
        pins = " x ".join(f"{name}={value}" for name, value in (("tp", tp), ("pp", pp), ("dp", dp)) if value)
        raise SpecError(f"--pp/--dp: no layout {pins} fits {gpus} GPUs serving {batch} requests (tp x pp x dp must be "
                        f"at most the GPUs, pp at most {model.name}'s {model.num_pipeline_layers} pipeline layers, dp "
                        "must divide --batch); lower the pins or raise --gpus/--nodes")
    return found


def _divides_heads(model: ModelSpec, tp: int) -> bool:
    return model.heads % tp == 0 and (model.kv_heads or model.heads) % tp == 0


def microbatch_sizes(requests: int, in_flight: int) -> list[int]:
    """ceil(requests / in_flight) and every power of two below it that still fills ``in_flight`` batches."""
    top = -(-requests // in_flight)
    sizes = sorted({top, *(2 ** i for i in range(top.bit_length()) if 2 ** i < top)})
    return [b for b in sizes if -(-requests // b) >= in_flight]


def pass_count(serving: ServingSpec, requests: int, batch: int) -> int:
    """Passes per stage of a replica serving ``requests`` in batches of ``batch``: each batch runs as many
    passes as its longest request generates tokens (``passes.plan_passes``), counted without building them."""
    if len(serving.mix) == 1:
        return -(-requests // batch) * serving.mix[0].output_len
    order = request_order(serving.mix, requests)
    return sum(max(r.output_len for r in order[i:i + batch]) for i in range(0, requests, batch))


@lru_cache(maxsize=256)
def _shape_counts(serving: ServingSpec, requests: int, batch: int) -> tuple[tuple[PassShape, int], ...]:
    """How many passes of each shape a replica runs; the slots (micro-batches in flight) change only
    which pass runs when, not the shapes."""
    counts: dict[PassShape, int] = {}
    for p in plan_passes(ServingSpec(serving.mix, requests), 1, batch).passes:
        counts[p.shape] = counts.get(p.shape, 0) + 1
    return tuple(counts.items())


@lru_cache(maxsize=256)
def layer_seconds(model: ModelSpec, cluster, tp: int, serving: ServingSpec, requests: int,
                  batch: int) -> tuple[float, float, float]:
    """Seconds an embedding, a block and a head layer spend on all passes of one replica's run of
    ``requests`` in batches of ``batch``: what a stage of those layers adds to its device's busy time."""
    shapes = _shape_counts(serving, requests, batch)
    return tuple(sum(n * layer_pass(model, kind, cluster.gpu, cluster.intra, tp, shape).seconds for shape, n in shapes)
                 for kind in (EMBEDDING, BLOCK, HEAD))


@lru_cache(maxsize=1024)
def balanced_split(model: ModelSpec, pp: int, seconds: tuple[float, float, float]) -> tuple[int, ...]:
    """The contiguous cut into ``pp`` stages whose busiest stage is least busy, the embedding, each block
    and the head weighted by ``seconds`` (``layer_seconds``), by the planner's linear partition
    (``planner.baselines.linear_partition``)."""
    weight = dict(zip((EMBEDDING, BLOCK, HEAD), seconds))
    return linear_partition([weight[model.layer_kind(i)] for i in range(model.num_pipeline_layers)], pp)


def enumerate_candidates(model: ModelSpec, cluster, serving: ServingSpec, found_layouts: list[Layout],
                         sizes: tuple[int, ...] | None = None) -> tuple[list[ServingCandidate], list[str]]:
    """Every candidate of the ``found_layouts`` (see the module docstring), and a line per group of
    candidates left out for their size. ``sizes`` restricts the micro-batch sizes (requests per micro-batch).
    The space is sized (``check_space``) before any cut is computed."""
    ops_limit = limit("ops")
    shapes, left_out = [], []
    for lay in found_layouts:
        for k in range(1, lay.pp + 1):
            for b in microbatch_sizes(lay.requests, k):
                if sizes is not None and b not in sizes:
                    continue
                passes = pass_count(serving, lay.requests, b)
                if passes * lay.pp > ops_limit:
                    left_out.append(f"{lay.label} b={b} k={k}: {passes * lay.pp:,} ops")
                else:
                    shapes.append((lay, k, b, passes))
    check_space(shapes, left_out)
    out = []
    for lay, k, b, passes in shapes:
        splits = {EVEN: even_split(model.num_pipeline_layers, lay.pp)}
        if lay.pp > 1:
            seconds = layer_seconds(model, cluster, lay.tp, serving, lay.requests, b)
            balanced = balanced_split(model, lay.pp, seconds)
            if balanced != splits[EVEN]:
                splits[BALANCED] = balanced
        out.extend(ServingCandidate(lay, name, cut, b, k, passes) for name, cut in splits.items())
    return sorted(out, key=lambda c: c.key), left_out


def check_space(shapes: list[tuple[Layout, int, int, int]], left_out: list[str]) -> None:
    """Refuse, before anything is priced, a space whose runs together could be over the ``serving_ops`` limit
    (each (layout, k, b) counted with both cuts when pp > 1), or an empty one (every run over ``ops``)."""
    if not shapes:
        raise SpecError(f"--batch: every candidate's run is over the ops limit of {limit('ops'):,} (e.g. "
                        f"{left_out[0]}); serve fewer requests (--batch) or shorter outputs, or raise PIPEPLAN_MAX_OPS")
    count = sum(2 if lay.pp > 1 else 1 for lay, _, _, _ in shapes)
    total = sum(passes * lay.pp * (2 if lay.pp > 1 else 1) for lay, _, _, passes in shapes)
    check("serving_ops", total, f"optimize --inference: the runs of its up to {count:,} candidates together",
          "pin --tp, --pp or --dp, serve fewer requests (--batch) or shorter outputs",
          f" (the most the search could simulate; {math.ceil(total * 4e-6):,} s at about 4 us per op)")
