"""Each rank runs exactly its action list from the shared schedule IR, with real point-to-point traffic.

What an op waits for comes from ``simulator.deps`` (the rules the checker and the engine use). A
dependency on another device is a transfer over a *channel*: one process group per ordered device
pair (src -> dst), carrying that pair's boundary tensors in the order the sender produces them.
Because each channel is FIFO in a fixed order both ends know from the schedule, and every channel
has its own group (its own NCCL communicator and stream), a receive can never wait behind an
unrelated send: the run cannot deadlock unless the schedule itself does, which the checker rules out.

* gloo: every receive of the iteration is posted up front (unique tag per transfer), so a send
  never waits for its matching receive to be posted.
* NCCL: receives are posted in the sender's order just before they are needed (a posted NCCL
  receive holds GPU resources while it waits); sends are ``isend`` on the pair's own stream.

Every wait has a timeout; a failed or timed-out wait raises ``PeerFailure`` naming the peer and
what was awaited, so the launcher can say which rank failed and why.

With tensor or data parallelism every (data, tensor) replica runs the same schedule over channels of
its own: a channel joins pipeline devices ``src`` -> ``dst`` of one replica, i.e. the global ranks
``src_rank`` -> ``dst_rank`` in Megatron's order (``pipeplan.parallel.Layout``).
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from simulator.deps import schedule_dependencies
from simulator.ir import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD, Action, Schedule

from . import devices
from .compute import StageRunner

FAULT_ENV = "PIPEPLAN_VALIDATOR_FAULT"


class PeerFailure(RuntimeError):
    """A wait on another rank failed or timed out; ``peer`` is that rank (None: unknown, a collective)."""

    def __init__(self, peer: int | None, message: str) -> None:
        super().__init__(message)
        self.peer = peer


@dataclass(frozen=True)
class Transfer:
    """A boundary tensor crossing devices: ``producer`` on ``src`` feeds ``consumer`` on ``dst``."""

    producer: Action
    consumer: Action
    src: int
    dst: int
    direction: str  # "fwd" (activations) or "bwd" (input gradient)
    tag: int  # position on its channel within one iteration

    def describe(self) -> str:
        what = "activations" if self.direction == "fwd" else "input gradient"
        return f"the {what} of {self.producer} for {self.consumer}"


def plan_transfers(schedule: Schedule) -> dict[tuple[int, int], list[Transfer]]:
    """Per channel (src, dst), its transfers in the order the sender produces them."""
    # Simulated actions: an overlapped pair (torch's runtime runs DualPipeV's) counts as its two parts.
    position = {a: (d, i) for d in range(schedule.num_devices) for i, a in enumerate(schedule.simulated_actions(d))}
    found: dict[tuple[int, int], list[tuple[int, Action, Action, str]]] = {}
    for consumer, deps in schedule_dependencies(schedule).items():
        dst = position[consumer][0]
        for dep in deps:
            src, order = position[dep.producer]
            if dep.direction != "local" and src != dst:
                found.setdefault((src, dst), []).append((order, dep.producer, consumer, dep.direction))
    channels = {}
    for key in sorted(found):
        rows = sorted(found[key], key=lambda r: (r[0], r[2]))
        channels[key] = [Transfer(p, c, key[0], key[1], direction, tag) for tag, (_, p, c, direction) in enumerate(rows)]
    return channels


@dataclass(frozen=True)
class Fault:
    """A fault to inject, for tests: at this rank's ``op``-th compute op (0-based, warm-up included)."""

    rank: int
    op: int
    mode: str  # kill | raise | hang

    @staticmethod
    def from_env() -> "Fault | None":
        """``PIPEPLAN_VALIDATOR_FAULT=rank:op:mode``, e.g. ``1:5:kill``."""
        text = os.environ.get(FAULT_ENV, "").strip()
        if not text:
            return None
        rank, op, mode = text.split(":")
        if mode not in ("kill", "raise", "hang"):
            raise ValueError(f"{FAULT_ENV}: mode must be kill, raise or hang (got {mode!r})")
        return Fault(int(rank), int(op), mode)

    def trigger(self, action: Action) -> None:
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "raise":
            raise RuntimeError(f"injected fault at op {self.op} ({action})")
        while True:  # hang: never return; the peers' waits time out
            time.sleep(3600)


@contextmanager
def talking_to(peer: int | None, what: str):
    """Any error inside (a refused send, a collective whose peer vanished) is a ``PeerFailure``."""
    try:
        yield
    except PeerFailure:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeerFailure(peer, f"{what}: {first}") from None


def _wait(work, timeout: float, peer: int | None, what: str) -> None:
    try:
        ok = work.wait(timedelta(seconds=timeout))
    except Exception as err:  # gloo raises on timeouts and on a peer that went away
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeerFailure(peer, f"waiting for {what}: {first}") from None
    if ok is False:
        raise PeerFailure(peer, f"timed out after {timeout:g} s waiting for {what}")


class Channel:
    """One ordered device pair's boundary tensors, in one process group of its own."""

    def __init__(self, src: int, dst: int, group, transfers: list[Transfer], shape: tuple[int, ...],
                 dtype: torch.dtype, device: torch.device, staged: bool, prepost: bool, timeout: float,
                 ranks: tuple[int, int] | None = None) -> None:
        self.src, self.dst, self.group = src, dst, group
        self.src_rank, self.dst_rank = ranks if ranks is not None else (src, dst)
        self.transfers = transfers
        self.by_consumer = {(t.producer, t.consumer): t for t in transfers}
        self.shape, self.dtype, self.timeout = shape, dtype, timeout
        # gloo moves only CPU tensors: with CUDA compute the buffers live in host memory.
        self.buffer_device = torch.device("cpu") if staged else device
        self.device, self.staged, self.prepost = device, staged, prepost
        self.posted: dict[int, tuple[object, torch.Tensor]] = {}
        self.sends: list[tuple[object, torch.Tensor, Transfer]] = []

    # receiving end
    def start_iteration(self) -> None:
        self.posted = {}
        if self.prepost:
            for t in self.transfers:
                self._post(t)

    def _post(self, t: Transfer) -> None:
        buffer = torch.empty(self.shape, dtype=self.dtype, device=self.buffer_device)
        with talking_to(self.src, f"posting the receive of {t.describe()}"):
            self.posted[t.tag] = (dist.irecv(buffer, self.src_rank, group=self.group, tag=t.tag), buffer)

    def receive(self, producer: Action, consumer: Action) -> torch.Tensor:
        t = self.by_consumer[(producer, consumer)]
        for earlier in self.transfers[: t.tag + 1]:  # lazy posting keeps the sender's order
            if earlier.tag not in self.posted:
                self._post(earlier)
        work, buffer = self.posted[t.tag]
        _wait(work, self.timeout, self.src_rank, f"{t.describe()} from rank {self.src_rank}")
        return devices.to_device(buffer, self.device) if self.staged else buffer

    # sending end
    def send(self, producer: Action, consumer: Action, tensor: torch.Tensor) -> None:
        t = self.by_consumer[(producer, consumer)]
        payload = tensor.detach()
        payload = devices.to_host(payload) if self.staged else payload.contiguous()
        with talking_to(self.dst_rank, f"sending {t.describe()} to rank {self.dst_rank}"):
            self.sends.append((dist.isend(payload, self.dst_rank, group=self.group, tag=t.tag), payload, t))

    def finish_sends(self) -> None:
        for work, _, t in self.sends:
            _wait(work, self.timeout, self.dst_rank, f"rank {self.dst_rank} to take {t.describe()}")
        self.sends = []


def make_channels(schedule: Schedule, rank: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                  backend: str, timeout: float, channel_type: type = Channel,
                  replicas: list[list[int]] | None = None, replica: int = 0) -> dict[tuple[int, int], Channel]:
    """Create one group per channel on every rank (``new_group`` is collective), keep this rank's
    (as ``channel_type``: a serving run's buffers take each transfer's shape).

    ``replicas``: per (data, tensor) replica the global rank of each pipeline device (None: one replica,
    device = rank); every replica's groups are made on every rank, this rank (device ``rank`` of
    replica ``replica``) keeps its own."""
    staged = devices.stages_through_host(backend, device)
    mine = {}
    planned = plan_transfers(schedule)
    # Every pair gets a group each way, even one that carries no boundary tensor: link calibration
    # answers on the reverse group, and an NCCL communicator must never carry both directions (its
    # one stream would serialise a receive in front of the send it waits for).
    for key in list(planned):
        planned.setdefault((key[1], key[0]), [])
    replicas = replicas or [list(range(schedule.num_devices))]
    for r, ranks in enumerate(replicas):
        for (src, dst), transfers in sorted(planned.items()):
            group = dist.new_group([ranks[src], ranks[dst]], timeout=timedelta(seconds=timeout), backend=backend)
            if r == replica and rank in (src, dst):
                extra = {"ranks": (ranks[src], ranks[dst])} if len(replicas) > 1 else {}
                mine[(src, dst)] = channel_type(src, dst, group, transfers, shape, dtype, device, staged,
                                                prepost=backend == "gloo", timeout=timeout, **extra)
    return mine


@dataclass(frozen=True)
class OpMark:
    action: Action
    start: object  # a clock mark (float on CPU, CUDA event on GPU)
    end: object


@dataclass(frozen=True)
class ArrivalMark:
    producer: Action
    consumer: Action
    src: int
    mark: object


class RankExecutor:
    """Runs one rank's action list once per call of ``run_iteration``."""

    def __init__(self, schedule: Schedule, rank: int, runners: dict[int, StageRunner],
                 channels: dict[tuple[int, int], Channel], clock, fault: Fault | None = None, step=None) -> None:
        """``rank``: the pipeline device; ``step``: its ``data_parallel.TrainingStep`` (None: the runners
        step untimed after every iteration)."""
        self.schedule, self.rank, self.runners, self.channels, self.clock = schedule, rank, runners, channels, clock
        self.step = step
        self.actions = schedule.device_actions[rank]
        deps = schedule_dependencies(schedule)
        device_of = schedule.stage_to_device
        self.inputs: dict[Action, list[tuple[Action, int]]] = {}
        self.outputs: dict[Action, list[tuple[Action, int]]] = {}
        for action in self.actions:
            self.inputs[action] = [(d.producer, device_of[d.producer.stage]) for d in deps[action]
                                   if d.direction != "local"]
        for consumer, dep_list in deps.items():
            for d in dep_list:
                if d.direction != "local" and device_of[d.producer.stage] == rank:
                    self.outputs.setdefault(d.producer, []).append((consumer, device_of[consumer.stage]))
        self.fault = fault if fault is not None and fault.rank == rank else None
        self.ops_run = 0
        self.mailbox: dict[tuple[Action, Action], torch.Tensor] = {}

    def _gather_input(self, action: Action, arrivals: list[ArrivalMark]) -> torch.Tensor | None:
        tensor = None
        for producer, src in self.inputs[action]:
            if src == self.rank:
                tensor = self.mailbox.pop((producer, action))
            else:
                tensor = self.channels[(src, self.rank)].receive(producer, action)
                arrivals.append(ArrivalMark(producer, action, src, self.clock.mark()))
        return tensor

    def _compute(self, action: Action, received: torch.Tensor | None) -> torch.Tensor | None:
        runner = self.runners[action.stage]
        if action.kind == FORWARD:
            return runner.forward(action.microbatch, received)
        if action.kind == FULL_BACKWARD:
            return runner.backward(action.microbatch, received, split=False)
        if action.kind == BACKWARD_INPUT:
            return runner.backward(action.microbatch, received, split=True)
        if action.kind == BACKWARD_WEIGHT:
            runner.weight(action.microbatch)
            return None
        raise ValueError(f"unknown action kind in {action}")

    def run_iteration(self) -> tuple[list[OpMark], list[ArrivalMark]]:
        """One real iteration: every op waits for its inputs, computes, hands its output over."""
        marks, arrivals = self._iterate(replay=False)
        if self.step is not None:
            marks += [OpMark(*m) for m in self.step.finish()]
        self._finish_sends()
        if self.step is None:
            for runner in self.runners.values():
                runner.step()
        return marks, arrivals

    def _finish_sends(self) -> None:
        for channel in self.channels.values():
            if channel.src == self.rank:
                channel.finish_sends()

    def replay(self) -> list[OpMark]:
        """Calibration: the same ops in the same order with the same traffic, but nothing waited for.

        Each op takes a synthetic input instead of waiting for its producer and still sends its
        output, so it is timed alone (no bubble, no transfer in front of it) yet with everything
        the run puts around it: the cache state the schedule's order leaves and the CPU that the
        backend's send and receive work takes from compute. The traffic is drained at the end.
        """
        marks, _ = self._iterate(replay=True)
        if self.step is not None:  # the reductions, and the optimizer steps timed without moving the weights
            marks += [OpMark(*m) for m in self.step.finish(apply=False)]
        # Receive before waiting on our own sends: with NCCL a peer's receive is only posted here.
        for channel in self.channels.values():
            if channel.dst == self.rank:
                for t in channel.transfers:
                    channel.receive(t.producer, t.consumer)
        self._finish_sends()
        return marks

    def _synthetic(self, action: Action) -> torch.Tensor | None:
        runner = self.runners[action.stage]
        if (action.kind == FORWARD and runner.first) or (action.kind in (FULL_BACKWARD, BACKWARD_INPUT) and runner.last):
            return None
        if action.kind == BACKWARD_WEIGHT:
            return None
        return torch.randn(runner.boundary_shape(), dtype=runner.dtype, device=runner.device)

    def _iterate(self, replay: bool) -> tuple[list[OpMark], list[ArrivalMark]]:
        self.clock.begin_iteration()
        for channel in self.channels.values():
            if channel.dst == self.rank:
                channel.start_iteration()
        marks: list[OpMark] = []
        arrivals: list[ArrivalMark] = []
        for index, action in enumerate(self.actions):
            if replay:
                received = self._synthetic(action)
            else:
                received = self._gather_input(action, arrivals)
                if self.fault is not None and self.ops_run == self.fault.op:
                    self.fault.trigger(action)
                self.ops_run += 1
            start = self.clock.mark()
            result = self._compute(action, received)
            for consumer, dst in self.outputs.get(action, ()):
                if dst != self.rank:
                    self.channels[(self.rank, dst)].send(action, consumer, result)
                elif not replay:
                    self.mailbox[(action, consumer)] = result.detach()
            # The op ends once its output is handed over: issuing a send is CPU work this device does
            # before it can start anything else (tens of microseconds for gloo), so it is part of the op.
            end = self.clock.mark()
            marks.append(OpMark(action, start, end))
            if self.step is not None:  # the replay reduces its gradients as the run does (calibrate.replay_round)
                self.step.after(index)
        return marks, arrivals
