"""Serving (inference) plans: forward-only pipelines with prefill and decode passes and a KV cache.

* ``requests``: the request mix a plan serves (``ServingSpec``, ``RequestClass``);
* ``costs``: prefill and decode per layer with tensor parallelism, KV-cache bytes per token, weights;
* ``passes``: which request batch and step each micro-batch of the run is (``plan_passes``);
* ``lowering``: a serving plan -> a forward-only simulator workload;
* ``metrics``: time to first token, time per output token, end-to-end latency, throughput, memory;
* ``api``: ``simulate_serving`` (re-exported by ``pipeplan``).

Only ``requests`` is imported here: ``pipeplan.plan`` holds a ``ServingSpec`` and the rest imports plans.
"""
from .requests import RequestClass, ServingSpec, parse_mix, request_order

__all__ = ["RequestClass", "ServingSpec", "parse_mix", "request_order"]
