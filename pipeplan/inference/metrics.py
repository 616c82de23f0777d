"""What a simulated serving run says about its requests: latency, throughput, bubble, memory.

Every request of the run arrives at time 0 (an offline queue: requests past the first round wait for
a slot, and that wait is in their latencies). For request i with output length T_i:

* time to first token (TTFT): when the last stage ends its batch's prefill pass;
* time per output token (TPOT): (end-to-end − TTFT) / (T_i − 1), over the requests with T_i > 1;
* end-to-end latency: when the last stage ends the pass that makes its last token.

Percentiles are nearest-rank (the ⌈q·n⌉-th smallest value). Throughput counts generated tokens
(output lengths, first tokens included) of all dp replicas over the run's makespan. Memory per
device at its peak splits into weights, KV cache and activations, read off two replays of the
simulator's memory events (``simulator.memory``), with and without the activations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

from simulator.engine import SimResult
from simulator.workload import Workload

from ..breakdown import memory_levels
from .lowering import ServingResolved


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the ⌈q·n⌉-th smallest of ``values`` (q in (0, 1]); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@dataclass(frozen=True)
class Distribution:
    """Mean, median and 99th percentile of a per-request quantity (seconds)."""

    mean: float
    p50: float
    p99: float

    @staticmethod
    def of(values: list[float]) -> "Distribution":
        mean = sum(values) / len(values) if values else math.nan
        return Distribution(mean, percentile(values, 0.5), percentile(values, 0.99))

    def to_dict(self) -> dict:
        return {k: (None if math.isnan(v) else v) for k, v in (("mean", self.mean), ("p50", self.p50), ("p99", self.p99))}


@dataclass(frozen=True)
class ServingMemory:
    """One device at its peak: bf16 weights, the KV cache it holds then, activations in flight."""

    weights: float
    kv_cache: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations

    def to_dict(self) -> dict:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "activations": self.activations}


def serving_memory(sim: SimResult, workload: Workload) -> tuple[ServingMemory, ...]:
    """Per device, its peak split into weights, KV cache and activations (see the module docstring)."""
    p = len(sim.peak_memory)
    static = list(workload.static_bytes) or [0.0] * p

    def no_activations(costs):
        return tuple(replace(c, activation_bytes=0.0) for c in costs)

    cache_only = replace(workload, stages=no_activations(workload.stages),
                         pass_stages=tuple(no_activations(costs) for costs in workload.pass_stages))
    full = memory_levels(sim.timeline, workload, static)
    cache = memory_levels(sim.timeline, cache_only, [0.0] * p)
    parts = []
    for d in range(p):
        at = max(range(len(full[d])), key=full[d].__getitem__)
        parts.append(ServingMemory(static[d], cache[d][at], full[d][at] - static[d] - cache[d][at]))
    return tuple(parts)


@dataclass(frozen=True)
class ServingResult:
    """A simulated serving plan: the engine's result, its workload, and the per-request figures."""

    sim: SimResult
    workload: Workload
    resolved: ServingResolved

    @property
    def plan(self):
        return self.resolved.plan

    @cached_property
    def _last_stage_ends(self) -> dict[int, float]:
        last = self.resolved.schedule.num_stages - 1
        return {op.action.microbatch: op.end for op in self.sim.timeline.ops if op.action.stage == last}

    @cached_property
    def first_token_times(self) -> list[float]:
        passes, ends = self.resolved.passes, self._last_stage_ends
        return [ends[passes.first_token_pass(i).microbatch] for i in range(len(passes.requests))]

    @cached_property
    def end_to_end_times(self) -> list[float]:
        passes, ends = self.resolved.passes, self._last_stage_ends
        return [ends[passes.last_token_pass(i).microbatch] for i in range(len(passes.requests))]

    @cached_property
    def per_output_token_times(self) -> list[float]:
        requests = self.resolved.passes.requests
        return [(e - f) / (r.output_len - 1) for r, f, e in zip(requests, self.first_token_times,
                                                                 self.end_to_end_times) if r.output_len > 1]

    @property
    def ttft(self) -> Distribution:
        return Distribution.of(self.first_token_times)

    @property
    def tpot(self) -> Distribution:
        return Distribution.of(self.per_output_token_times)

    @property
    def latency(self) -> Distribution:
        return Distribution.of(self.end_to_end_times)

    @property
    def makespan(self) -> float:
        return self.sim.iteration_time

    @property
    def output_tokens(self) -> int:
        """Generated tokens of all dp replicas (each serves the mix)."""
        return self.resolved.passes.output_tokens * self.plan.dp

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.makespan if self.makespan > 0 else math.nan

    @property
    def requests_per_second(self) -> float:
        return len(self.resolved.passes.requests) * self.plan.dp / self.makespan if self.makespan > 0 else math.nan

    @property
    def bubble_fraction(self) -> float:
        return self.sim.bubble_fraction

    @property
    def peak_memory(self) -> list[float]:
        return self.sim.peak_memory

    @property
    def fits(self) -> bool:
        return not any(self.sim.out_of_memory)

    @cached_property
    def memory(self) -> tuple[ServingMemory, ...]:
        return serving_memory(self.sim, self.workload)

    def summary(self) -> dict:
        r, plan = self.resolved, self.plan
        return {
            "model": r.model.name, "cluster": r.cluster.name, "schedule": plan.schedule,
            "tp": plan.tp, "pp": plan.pp, "dp": plan.dp, "num_gpus": plan.num_gpus,
            "microbatch_size": plan.microbatch_size, "microbatches": plan.num_microbatches,
            "mix": r.serving.to_dict()["mix"], "requests": len(r.passes.requests),
            "passes": len(r.passes.passes), "layers_per_stage": list(plan.layers_per_stage),
            "makespan": self.makespan, "output_tokens": self.output_tokens,
            "tokens_per_second": self.tokens_per_second, "requests_per_second": self.requests_per_second,
            "ttft": self.ttft.to_dict(), "tpot": self.tpot.to_dict(), "latency": self.latency.to_dict(),
            "bubble_fraction": self.bubble_fraction, "device_bubble_fraction": self.sim.device_bubble_fraction,
            "peak_memory": self.peak_memory, "capacity": [c if math.isfinite(c) else None for c in self.sim.capacity],
            "out_of_memory": self.sim.out_of_memory, "fits": self.fits,
            "memory_breakdown": [m.to_dict() for m in self.memory],
        }
