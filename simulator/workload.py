"""What the engine simulates: per-stage costs, per-device memory, the network, the schedule.

Plain data in seconds and bytes. ``pipeplan.lower`` builds one from a model, a cluster and a plan;
``uniform_workload`` builds the synthetic kind the ``pipeplan schedule`` command uses, ``times_workload``
the same from per-stage times (``StageTimes``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .ir import Schedule, ScheduleError
from .stage_times import StageTimes


@dataclass(frozen=True)
class StageCost:
    """One stage, one micro-batch.

    Memory: F allocates ``activation_bytes`` when it starts. A full backward B frees all of it
    when it ends. With the split backward, I frees everything except ``weight_grad_bytes`` (the
    layer inputs and output gradients the weight gradient still needs) and W frees those.
    UNSHARD holds ``gathered_bytes`` (the gathered parameters) until RESHARD (see ``kinds``).
    ``backward`` is the full-backward time; it defaults to I + W. ``collectives`` price the
    stage's communication actions, at most one per kind. ``optimizer`` is the time of the stage's
    optimizer step (the per-stage ``OPTIMIZER`` action, once per iteration, not per micro-batch).
    """

    forward: float
    backward_input: float
    backward_weight: float
    backward: float | None = None
    send_forward_bytes: float = 0.0
    send_backward_bytes: float = 0.0
    activation_bytes: float = 0.0
    weight_grad_bytes: float = 0.0
    gathered_bytes: float = 0.0
    collectives: tuple["Collective", ...] = ()
    optimizer: float = 0.0
    # An overlapped F&B (``kinds.OVERLAP_F_B``) whose forward part is this stage's takes this long;
    # None: this stage's F plus the paired stage's B, i.e. no gain from overlapping.
    overlap: float | None = None

    @property
    def full_backward(self) -> float:
        return self.backward_input + self.backward_weight if self.backward is None else self.backward

    def collective(self, kind: str) -> "Collective | None":
        """The stage's collective for a communication kind (``kinds.REDUCE_GRAD`` ...), if it has one."""
        for collective in self.collectives:
            if collective.kind == kind:
                return collective
        return None


@dataclass(frozen=True)
class Link:
    """A one-way path between two devices: a transfer of X bytes alone takes latency + X / bandwidth.

    ``ports`` name the shared resources it crosses (a GPU's NVLink port, a NIC); transfers that
    overlap on a port share its capacity max-min fairly.
    """

    latency: float
    bandwidth: float = math.inf
    ports: tuple[str, ...] = ()

    def rate(self, port_capacity: dict[str, float]) -> float:
        """Bytes per second of a transfer alone on this link: its own cap and every port's capacity."""
        rate = self.bandwidth
        for port in self.ports:
            rate = min(rate, port_capacity.get(port, math.inf))
        return rate

    def seconds(self, nbytes: float, port_capacity: dict[str, float]) -> float:
        """``nbytes`` alone on this link: latency + nbytes / rate (the latency alone without bytes or limit)."""
        rate = self.rate(port_capacity)
        if nbytes <= 0 or math.isinf(rate):
            return self.latency
        return self.latency + nbytes / rate


@dataclass(frozen=True)
class Collective:
    """A stage's group operation (``kind`` REDUCE_GRAD or UNSHARD) as one member device sees it.

    ``nbytes`` cross each member's ports (for a ring all-reduce of S bytes over n ranks,
    2(n-1)/n·S); ``path.latency`` is the fixed part (2(n-1)·α for that ring), ``path.bandwidth``
    the per-member rate limit and ``path.ports`` every port on the group's route, of every member.
    Alone it takes ``path.seconds(nbytes)``; overlapping transfers share those ports max-min fairly.
    The workload's builder prices it (the simulator knows no formula for any collective).
    """

    kind: str
    nbytes: float
    path: Link

    def seconds(self, port_capacity: dict[str, float]) -> float:
        return self.path.seconds(self.nbytes, port_capacity)


@dataclass(frozen=True)
class Network:
    """``links[src][dst]`` for every ordered device pair; ``port_capacity`` in bytes per second."""

    links: tuple[tuple[Link, ...], ...]
    port_capacity: dict[str, float] = field(default_factory=dict)

    def link(self, src: int, dst: int) -> Link:
        return self.links[src][dst]

    def transfer_seconds(self, src: int, dst: int, nbytes: float) -> float:
        """A transfer of ``nbytes`` alone on the link ``src -> dst``: latency + nbytes / rate.

        The one definition of an uncontended transfer's time (engine, lowering and planner use it).
        No bytes, or an unbounded rate, costs the latency alone; a device sending to itself costs 0.
        """
        if src == dst:
            return 0.0
        return self.links[src][dst].seconds(nbytes, self.port_capacity)


@dataclass(frozen=True)
class Workload:
    schedule: Schedule
    stages: tuple[StageCost, ...]
    network: Network
    static_bytes: tuple[float, ...] = ()
    capacity_bytes: tuple[float, ...] = ()
    # True: a device's stream that issues a send waits until it is delivered before its next op
    # (blocking point-to-point exchanges); False: sends overlap whatever the device does next.
    blocking_sends: bool = False

    def __post_init__(self) -> None:
        p = self.schedule.num_devices
        if len(self.stages) != self.schedule.num_stages:
            raise ScheduleError(
                f"stages: the workload has {len(self.stages)} stage costs but the schedule has "
                f"{self.schedule.num_stages} stages"
            )
        if len(self.network.links) != p or any(len(row) != p for row in self.network.links):
            raise ScheduleError(f"network: links must be a {p}x{p} table, one per device pair")
        if self.static_bytes and len(self.static_bytes) != p:
            raise ScheduleError(f"static_bytes: need one value per device ({p})")
        if self.capacity_bytes and len(self.capacity_bytes) != p:
            raise ScheduleError(f"capacity_bytes: need one value per device ({p})")


def uniform_network(num_devices: int, latency: float = 0.0, bandwidth: float = math.inf) -> Network:
    """Every device pair joined by the same private link (no shared ports)."""
    link = Link(latency, bandwidth)
    return Network(tuple(tuple(link for _ in range(num_devices)) for _ in range(num_devices)))


def uniform_workload(
    schedule: Schedule,
    forward: float = 1.0,
    backward_input: float = 1.0,
    backward_weight: float = 1.0,
    comm: float = 0.0,
    overlap: float | None = None,
) -> Workload:
    """Identical stages, unit activations, a fixed transfer time: the textbook setting.

    Each stage allocates 1 "byte" of activations per micro-batch, so memory curves count
    micro-batch activations alive (one per stage-chunk held).
    """
    checked = [("f", forward), ("b", backward_input), ("w", backward_weight), ("comm", comm)]
    for name, value in checked + ([("overlap", overlap)] if overlap is not None else []):
        if not (value >= 0 and math.isfinite(value)):
            raise ScheduleError(f"{name}: times must be finite and >= 0 (got {value})")
    cost = StageCost(forward, backward_input, backward_weight, activation_bytes=1.0, weight_grad_bytes=0.5,
                     overlap=overlap)
    return Workload(
        schedule=schedule,
        stages=tuple(cost for _ in range(schedule.num_stages)),
        network=uniform_network(schedule.num_devices, latency=comm),
        static_bytes=tuple(0.0 for _ in range(schedule.num_devices)),
        capacity_bytes=tuple(math.inf for _ in range(schedule.num_devices)),
    )


def times_workload(schedule: Schedule, times: StageTimes) -> Workload:
    """The workload a cost-aware order is built for: per-stage F, I, W from ``times``, a fixed transfer time per hop.

    As ``uniform_workload``: one unit of activations per stage and micro-batch, W holding
    ``times.held_fraction`` of it, no bytes on the wire, so a transfer of hop s (stage s <-> s + 1) takes
    ``times.comm[s]`` between different devices (``Link`` latency) and nothing on one device.
    Links are per device pair, so two hops between the same devices must have the same time.
    """
    if times.num_stages != schedule.num_stages:
        raise ScheduleError(f"costs: the schedule has {schedule.num_stages} stages but the costs give {times.num_stages}")
    p = schedule.num_devices
    latency = [[0.0] * p for _ in range(p)]
    owner: dict[tuple[int, int], int] = {}
    for s, comm in enumerate(times.comm):
        a, b = schedule.stage_to_device[s], schedule.stage_to_device[s + 1]
        if a == b:
            continue
        pair = (min(a, b), max(a, b))
        first = owner.setdefault(pair, s)
        if times.comm[first] != comm:
            raise ScheduleError(f"costs: hops {first} and {s} both join devices {pair[0]} and {pair[1]} but take "
                                f"{times.comm[first]:g} and {comm:g}; one link per device pair has one time")
        latency[a][b] = latency[b][a] = comm
    stages = tuple(StageCost(f, i, w, activation_bytes=1.0, weight_grad_bytes=times.held_fraction)
                   for f, i, w in zip(times.forward, times.backward_input, times.backward_weight))
    links = tuple(tuple(Link(latency[a][b]) for b in range(p)) for a in range(p))
    return Workload(schedule=schedule, stages=stages, network=Network(links),
                    static_bytes=tuple(0.0 for _ in range(p)), capacity_bytes=tuple(math.inf for _ in range(p)))
