"""Which pass of which request batch each micro-batch of a serving run is.

A replica serves its requests (``requests.request_order``) in batches of ``batch`` consecutive
requests (the plan's micro-batch size; the last batch may be smaller). It has ``streams`` slots
(the plan's micro-batches in flight); batch g runs in slot g mod streams, after the batch before
it in that slot is done (static batching per micro-batch: a batch's requests start together and
its slot takes the next batch when its longest request has its last token). A batch of requests
with output lengths T_i runs max(T_i) passes: pass 0 the prefill of every prompt, pass j >= 1 one
decode step of each request with T_i > j, whose cache then holds prompt_i + j tokens.

In the schedule IR (``simulator.forward_only.continuous_decode``, ``Schedule.recurrence`` = streams)
slot r's k-th pass is micro-batch k·streams + r. ``ServingPasses.by_microbatch`` maps every id the
schedule runs to its ``Pass``: what the validator feeds each F, what lowering prices.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..errors import SpecError
from ..limits import check
from .costs import PassShape
from .requests import RequestClass, ServingSpec, request_order


@dataclass(frozen=True)
class Pass:
    """Micro-batch ``microbatch``: pass ``step`` (0 = prefill, j >= 1 = the j-th decode step) of request
    batch ``batch`` in slot ``stream``; ``requests`` are the ids still generating, ``shape`` its tokens."""

    microbatch: int
    stream: int
    batch: int
    step: int
    requests: tuple[int, ...]
    shape: PassShape
    last: bool  # the batch's final pass: its slot's cache is freed after it


@dataclass(frozen=True)
class ServingPasses:
    """A replica's requests, batches and passes (see the module docstring)."""

    requests: tuple[RequestClass, ...]  # per request id
    batches: tuple[tuple[int, ...], ...]  # request ids per batch, in order
    streams: int
    passes: tuple[Pass, ...]  # in micro-batch id order (ids may have holes where slots stop early)

    @cached_property
    def by_microbatch(self) -> dict[int, Pass]:
        return {p.microbatch: p for p in self.passes}

    @property
    def passes_per_stream(self) -> tuple[int, ...]:
        counts = [0] * self.streams
        for p in self.passes:
            counts[p.stream] += 1
        return tuple(counts)

    @property
    def num_microbatches(self) -> int:
        return self.passes[-1].microbatch + 1

    def first_token_pass(self, request: int) -> Pass:
        """The prefill pass of ``request``'s batch: its first token is out when the last stage ends it."""
        return self._pass_of(request, 0)

    def last_token_pass(self, request: int) -> Pass:
        """The pass that makes ``request``'s last token."""
        return self._pass_of(request, self.requests[request].output_len - 1)

    def _pass_of(self, request: int, step: int) -> Pass:
        return self._index[request, step]

    @cached_property
    def _index(self) -> dict[tuple[int, int], Pass]:
        return {(r, p.step): p for p in self.passes for r in p.requests}

    @property
    def output_tokens(self) -> int:
        return sum(r.output_len for r in self.requests)


def _check_size(passes: int, stages: int) -> None:
    check("ops", passes * stages, f"serving run: {passes:,} passes (prefills and decode steps of the request batches) "
          f"x {stages} stages", "serve fewer requests or shorter outputs, or batch more requests per micro-batch")


def plan_passes(serving: ServingSpec, streams: int, batch: int, stages: int = 1) -> ServingPasses:
    """The passes of a replica with ``streams`` slots of ``batch`` requests serving ``serving``.

    A run of more ops (passes x ``stages``) than the ``ops`` limit is refused in one line before it is
    built: first by the fewest passes its request count allows, then by its exact count.
    """
    count = serving.request_count(streams * batch)
    _check_size(-(-count // batch) * min(c.output_len for c in serving.mix), stages)
    requests = tuple(request_order(serving.mix, count)) if len(serving.mix) > 1 else (serving.mix[0],) * count
    batches = tuple(tuple(range(start, min(start + batch, count))) for start in range(0, count, batch))
    lengths = [max(requests[i].output_len for i in ids) for ids in batches]
    _check_size(sum(lengths), stages)
    if len(batches) < streams:
        raise SpecError(f"serving.requests: {count} request(s) in batches of {batch} fill {len(batches)} of the "
                        f"{streams} micro-batches in flight; serve at least {streams * batch - batch + 1} requests "
                        "or lower -m")
    passes = []
    done = [0] * streams
    for g, ids in enumerate(batches):
        stream = g % streams
        for step in range(lengths[g]):
            live = tuple(i for i in ids if requests[i].output_len > step)
            shape = (PassShape.prefill_of(tuple(requests[i].prompt_len for i in live)) if step == 0 else
                     PassShape.decode_of(tuple(requests[i].prompt_len + step for i in live)))
            passes.append(Pass(done[stream] * streams + stream, stream, g, step, live, shape, step == lengths[g] - 1))
            done[stream] += 1
    passes.sort(key=lambda p: p.microbatch)
    return ServingPasses(requests, batches, streams, tuple(passes))
