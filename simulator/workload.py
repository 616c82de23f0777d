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
    In a forward-only schedule F frees its ``activation_bytes`` once the next stage has its input and
    keeps ``kept_bytes`` (state the later passes of its stream read); ``freed_kept_bytes`` are kept
    bytes of its stream it frees at that moment too (the state of a stream whose work is done).
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
    kept_bytes: float = 0.0
    freed_kept_bytes: float = 0.0

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
class Bucket:
    """One piece of a bucketed collective: ``share`` of its bytes, ready once its local producer is
    ``ready`` of the way through (0: at the producer's start, 1: at its end)."""

    share: float
    ready: float = 1.0


@dataclass(frozen=True)
class Collective:
    """A stage's group operation (``kind`` REDUCE_GRAD or UNSHARD) as one member device sees it.

    ``nbytes`` cross each member's ports (for a ring all-reduce of S bytes over n ranks,
    2(n-1)/n·S); ``path.latency`` is the fixed part (2(n-1)·α for that ring), ``path.bandwidth``
    the per-member rate limit and ``path.ports`` every port on the group's route, of every member.
    ``weights[i]``, when given, is the bytes port ``path.ports[i]`` carries per byte of ``nbytes``
    (several rings side by side each put a share of the bytes on their own ports); empty: 1 on
    every port. Alone it takes ``seconds``: latency + nbytes / the least of its cap and each port's
    capacity / weight; overlapping transfers share those ports max-min fairly, each flow loading a
    port with its rate x weight.

    ``buckets``, when given, split it into pieces that run one after another on the communication
    stream, each paying the whole latency: piece i moves ``buckets[i].share`` of the bytes and may start
    once its local producer on the compute stream is ``buckets[i].ready`` of the way through (gradient
    buckets reduced while the backward that fills them still runs); the shares add up to 1.
    The workload's builder prices it (the simulator knows no formula for any collective).
    """

    kind: str
    nbytes: float
    path: Link
    weights: tuple[float, ...] = ()
    buckets: tuple[Bucket, ...] = ()

    def __post_init__(self) -> None:
        if self.weights and (len(self.weights) != len(self.path.ports)
                             or not all(w > 0 and math.isfinite(w) for w in self.weights)):
            raise ScheduleError(f"collective {self.kind}: give one finite weight > 0 per port "
                                f"({len(self.path.ports)}), got {self.weights!r}")
        if self.buckets:
            if not all(b.share > 0 and 0 <= b.ready <= 1 for b in self.buckets):
                raise ScheduleError(f"collective {self.kind}: a bucket's share must be > 0 and its ready "
                                    f"fraction in [0, 1] (got {self.buckets!r})")
            if abs(sum(b.share for b in self.buckets) - 1.0) > 1e-9:
                raise ScheduleError(f"collective {self.kind}: bucket shares must add up to 1 "
                                    f"(got {sum(b.share for b in self.buckets)!r})")

    def rate(self, port_capacity: dict[str, float]) -> float:
        """Bytes of ``nbytes`` per second alone: its cap and every port's capacity over its weight."""
        if not self.weights:
            return self.path.rate(port_capacity)
        rate = self.path.bandwidth
        for port, weight in zip(self.path.ports, self.weights):
            rate = min(rate, port_capacity.get(port, math.inf) / weight)
        return rate

    def seconds(self, port_capacity: dict[str, float], share: float = 1.0) -> float:
        """``share`` of its bytes alone: latency + share x nbytes / ``rate`` (the latency alone without bytes or limit)."""
        if not self.weights:
            return self.path.seconds(self.nbytes * share if share != 1.0 else self.nbytes, port_capacity)
        rate = self.rate(port_capacity)
        nbytes = self.nbytes * share
        if nbytes <= 0 or math.isinf(rate):
            return self.path.latency
        return self.path.latency + nbytes / rate


class LinkTable:
    """``table[src][dst]``, the link from device ``src`` to ``dst``, made on demand by ``link(src, dst)``.

    A table of p x p links grows with p^2 (16,384 devices: 268 M entries, 2.1 GB for references to
    one shared link), while the engine only reads the pairs that exchange data, so subclasses say
    how a pair's link is found and nothing per pair is stored. Rows index like a tuple's.
    """

    __slots__ = ("size",)

    def __init__(self, size: int):
        self.size = size

    def link(self, src: int, dst: int) -> Link:
        raise NotImplementedError

    def key(self) -> tuple:
        """What defines the table: two tables of one class with equal keys hold the same links."""
        return (self.size,)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.key() == self.key()

    __hash__ = None  # type: ignore[assignment]  (a table may hold a dict; Networks are not hashed)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, src: int) -> "_LinkRow":
        if not -self.size <= src < self.size:
            raise IndexError(f"device {src} is not among {self.size}")
        return _LinkRow(self, src % self.size)

    def __iter__(self):
        return (_LinkRow(self, src) for src in range(self.size))


class _LinkRow:
    """One source device's row of a ``LinkTable``."""

    __slots__ = ("table", "src")

    def __init__(self, table: LinkTable, src: int):
        self.table, self.src = table, src

    def __len__(self) -> int:
        return self.table.size

    def __getitem__(self, dst: int) -> Link:
        size = self.table.size
        if not -size <= dst < size:
            raise IndexError(f"device {dst} is not among {size}")
        return self.table.link(self.src, dst % size)

    def __iter__(self):
        return (self.table.link(self.src, dst) for dst in range(self.table.size))


class UniformLinks(LinkTable):
    """The same link between every device pair."""

    __slots__ = ("shared",)

    def __init__(self, size: int, shared: Link):
        super().__init__(size)
        self.shared = shared

    def link(self, src: int, dst: int) -> Link:
        return self.shared

    def key(self) -> tuple:
        return (self.size, self.shared)


class PairLinks(LinkTable):
    """``pairs[(src, dst)]`` where given, else ``base``'s link (a ``Network``'s, or one ``Link`` for every pair)."""

    __slots__ = ("pairs", "base")

    def __init__(self, size: int, pairs: dict[tuple[int, int], Link], base: "Network | Link"):
        super().__init__(size)
        self.pairs, self.base = pairs, base

    def link(self, src: int, dst: int) -> Link:
        found = self.pairs.get((src, dst))
        if found is not None:
            return found
        return self.base if isinstance(self.base, Link) else self.base.link(src, dst)

    def key(self) -> tuple:
        return (self.size, self.pairs, self.base)


@dataclass(frozen=True)
class Network:
    """``links[src][dst]`` for every ordered device pair; ``port_capacity`` in bytes per second.

    ``links`` is a tuple of tuples, or a ``LinkTable`` that makes each pair's link when asked.
    """

    links: "tuple[tuple[Link, ...], ...] | LinkTable"
    port_capacity: dict[str, float] = field(default_factory=dict)

    def link(self, src: int, dst: int) -> Link:
        if isinstance(self.links, LinkTable):
            return self.links.link(src, dst)
        return self.links[src][dst]

    def transfer_seconds(self, src: int, dst: int, nbytes: float) -> float:
        """A transfer of ``nbytes`` alone on the link ``src -> dst``: latency + nbytes / rate.

        The one definition of an uncontended transfer's time (engine, lowering and planner use it).
        No bytes, or an unbounded rate, costs the latency alone; a device sending to itself costs 0.
        """
        if src == dst:
            return 0.0
        return self.link(src, dst).seconds(nbytes, self.port_capacity)

    @property
    def num_devices(self) -> int:
        return len(self.links)

    def square(self, p: int) -> bool:
        """Whether the table has a link for every ordered pair of ``p`` devices."""
        if isinstance(self.links, LinkTable):
            return self.links.size == p
        return len(self.links) == p and all(len(row) == p for row in self.links)


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
    # Micro-batches that cost differently (passes of different lengths): the per-micro-batch ops of
    # micro-batch m at stage s cost ``pass_stages[pass_class[m]][s]``. Empty: ``stages`` price every op;
    # per-stage kinds (collectives, the optimizer step) always take ``stages``.
    pass_class: tuple[int, ...] = ()
    pass_stages: tuple[tuple[StageCost, ...], ...] = ()

    def __post_init__(self) -> None:
        p = self.schedule.num_devices
        if len(self.stages) != self.schedule.num_stages:
            raise ScheduleError(
                f"stages: the workload has {len(self.stages)} stage costs but the schedule has "
                f"{self.schedule.num_stages} stages"
            )
        if not self.network.square(p):
            raise ScheduleError(f"network: links must be a {p}x{p} table, one per device pair")
        if self.static_bytes and len(self.static_bytes) != p:
            raise ScheduleError(f"static_bytes: need one value per device ({p})")
        if self.capacity_bytes and len(self.capacity_bytes) != p:
            raise ScheduleError(f"capacity_bytes: need one value per device ({p})")
        if self.pass_class or self.pass_stages:
            m, classes = self.schedule.num_microbatches, len(self.pass_stages)
            if len(self.pass_class) != m:
                raise ScheduleError(f"pass_class: need one cost class per micro-batch ({m}), got {len(self.pass_class)}")
            if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < classes for c in self.pass_class):
                raise ScheduleError(f"pass_class: every class must be an index into pass_stages (0..{classes - 1})")
            if any(len(costs) != len(self.stages) for costs in self.pass_stages):
                raise ScheduleError(f"pass_stages: every class needs one stage cost per stage ({len(self.stages)})")

    def cost_table(self) -> tuple[StageCost, ...]:
        """Every stage cost in one list: ``stages``, then each pass class's stages in order; see ``cost_index``."""
        return self.stages + tuple(c for costs in self.pass_stages for c in costs)

    def cost_index(self, stage: int, microbatch: int | None) -> int:
        """Where the cost of ``stage``'s op of ``microbatch`` (None: a per-stage op) sits in ``cost_table``."""
        if microbatch is None or not self.pass_class:
            return stage
        return len(self.stages) * (1 + self.pass_class[microbatch]) + stage

    def cost_of(self, stage: int, microbatch: int | None) -> StageCost:
        """The stage cost that prices ``stage``'s op of ``microbatch`` (None: a per-stage op)."""
        if microbatch is None or not self.pass_class:
            return self.stages[stage]
        return self.pass_stages[self.pass_class[microbatch]][stage]


def uniform_network(num_devices: int, latency: float = 0.0, bandwidth: float = math.inf) -> Network:
    """Every device pair joined by the same private link (no shared ports)."""
    return Network(UniformLinks(num_devices, Link(latency, bandwidth)))


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
    hops: dict[tuple[int, int], Link] = {}
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
        hops[a, b] = hops[b, a] = Link(comm)
    stages = tuple(StageCost(f, i, w, activation_bytes=1.0, weight_grad_bytes=times.held_fraction)
                   for f, i, w in zip(times.forward, times.backward_input, times.backward_weight))
    # Pairs no hop joins exchange nothing; their link is free, as a same-device hop is.
    return Workload(schedule=schedule, stages=stages, network=Network(PairLinks(p, hops, Link(0.0))),
                    static_bytes=tuple(0.0 for _ in range(p)), capacity_bytes=tuple(math.inf for _ in range(p)))
