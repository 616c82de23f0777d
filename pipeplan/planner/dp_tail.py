"""The data-parallel tail of an iteration as the planner prices it (dp > 1; ``pipeplan.dataparallel``).

After a device's last compute op, lowering's data-parallel actions still run on it: each stage's
``REDUCE_GRAD`` (communication stream, after the stage's last backward), its ``OPTIMIZER`` step (compute
stream, after the reduction) and, with the distributed optimizer, its ``GATHER_PARAMS`` (after the step).
The device's optimizer steps come after all of its compute ops in its list. So if device d's last
compute op is a backward (B or W) of stage k*, whose reduction can only start after it,

    T ≥ end of d's last op + R_d(k*) + opt(k*) + G_d(k*)      and      T ≥ end of d's last op + Σ_{s∈D(d)} opt(s)

where R_d and G_d are the reduction and the gather of d's data group alone on their ring (sharing ports
only slows them) and opt the Adam step's HBM time. Each is affine in the stage's parameters: latency +
parameters x seconds per parameter, priced by the same ``dataparallel.stage_collectives`` lowering uses.
Where a device holds several stages the bounds take the least of its stages for k* (a cost-aware order
may end on another stage than the generated order the planner reads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from ..cluster import ClusterSpec
from ..collectives import RING
from ..dataparallel import optimizer_seconds, reduced_grad_bytes, stage_collectives
from ..megatron_kernels import FUSED
from ..parallel import Layout


@dataclass(frozen=True)
class DataParallelTail:
    """Seconds of the data-parallel actions, affine in a stage's parameters on one GPU.

    ``optimizer``: the Adam step per parameter; ``reduce[d]`` and ``gather[d]``: (latency, seconds per
    parameter) of pipeline device d's gradient reduction and parameter gather alone ((0, 0) for the gather
    without the distributed optimizer)."""

    optimizer: float
    reduce: tuple[tuple[float, float], ...]
    gather: tuple[tuple[float, float], ...]

    def collectives(self, device: int, params: float) -> float:
        """R_d + G_d of a stage of ``params`` parameters on ``device``, alone."""
        (r0, r1), (g0, g1) = self.reduce[device], self.gather[device]
        return r0 + g0 + params * (r1 + g1)

    def after_last(self, device: int, last_params: float, device_params: float) -> float:
        """Seconds device ``device`` runs at least after its last compute op, when that op is a backward of a
        stage of ``last_params`` parameters and the device holds ``device_params`` in all (module docstring)."""
        return max(self.collectives(device, last_params) + self.optimizer * last_params,
                   self.optimizer * device_params)


def dp_tail(cluster: ClusterSpec, tp: int, pp: int, dp: int, distributed_optimizer: bool,
            port_capacity: dict[str, float], kernels: str = FUSED) -> DataParallelTail | None:
    """The tail's prices for a tp x pp x dp layout (None at dp = 1: lowering adds no data-parallel action).

    ``port_capacity`` is the pipeline network's table, which lowering lets override the collectives' ports;
    ``kernels`` the model's (its gradients' width and optimizer step, ``dataparallel``)."""
    if dp <= 1:
        return None
    reduce, gather = [], []
    for device, priced in enumerate(_collectives(cluster, tp, pp, dp, distributed_optimizer, kernels)):
        rates = []
        for latency, nbytes, link, ports in priced:
            capacity = {port: port_capacity.get(port, own) for port, own in ports}
            rates.append((latency, nbytes / link.rate(capacity)))
        reduce.append(rates[0])
        gather.append(rates[1] if len(rates) > 1 else (0.0, 0.0))
    step = optimizer_seconds(1.0, dp, distributed_optimizer, cluster.gpu, kernels)
    return DataParallelTail(step, tuple(reduce), tuple(gather))


@lru_cache(maxsize=64)
def _collectives(cluster: ClusterSpec, tp: int, pp: int, dp: int, distributed_optimizer: bool, kernels: str) -> tuple:
    """Per pipeline device, its collectives for one parameter: (latency, bytes, link, (port, capacity) of the
    ports it crosses), as lowering prices them (a layout search asks for each layout's many times)."""
    layout = Layout(tp, pp, dp)
    out = []
    for device in range(pp):
        collectives, ports = stage_collectives(cluster, layout, device, 1.0, distributed_optimizer, RING,
                                               reduced_grad_bytes(kernels))
        own = dict(ports)
        out.append(tuple((c.path.latency, c.nbytes, c.path, tuple((port, own.get(port, math.inf))
                                                                 for port in c.path.ports)) for c in collectives))
    return tuple(out)
