"""Serving (inference) plans: forward-only pipelines with prefill and decode passes and a KV cache.

* ``requests``: the request mix a plan serves (``ServingSpec``, ``RequestClass``);
* ``costs``: prefill and decode per layer with tensor parallelism, KV-cache bytes per token, weights;
* ``passes``: which request batch and step each micro-batch of the run is (``plan_passes``);
* ``lowering``: a serving plan -> a forward-only simulator workload;
* ``metrics``: time to first token, time per output token, end-to-end latency, throughput, memory;
* ``api``: ``simulate_serving`` (re-exported by ``pipeplan``).

A planner prices a layout with ``api.serving_plan`` (a ``Plan`` with ``serving``) -> ``api.resolve_serving``
-> ``lowering.build_serving_workload`` -> ``simulator.simulate`` -> ``metrics.ServingResult``; per layer,
``costs.layer_pass(model, kind, gpu, link, tp, PassShape)`` is one block's (or the embedding's, the head's)
time for a prefill or a decode step, the same for every block, so cuts can be priced per layer.
A validator runs ``ServingResolved.schedule`` (forward-only; ``recurrence`` R streams): micro-batch m is
``ServingResolved.passes.by_microbatch[m]`` (its batch, step 0 = prefill or j = decode step j, the
requests still generating, their new tokens and cache lengths); the first stage of a pass after a
stream's first waits for the last stage's ``costs.TOKEN_ID_BYTES`` per request (``simulator.deps``).

Only ``requests`` is imported here: ``pipeplan.plan`` holds a ``ServingSpec`` and the rest imports plans.
"""
from .requests import RequestClass, ServingSpec, parse_mix, request_order

__all__ = ["RequestClass", "ServingSpec", "parse_mix", "request_order"]
