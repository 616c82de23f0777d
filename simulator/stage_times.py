"""Per-stage op times a cost-aware schedule generator orders by (the Zero Bubble paper's T_F, T_B, T_W, T_comm).

A ``StageTimes`` is what the generators of ``zb-v``, ``zb-1p`` and ``zb-2p`` take besides (p, m, v):
the forward, input-gradient and weight-gradient time of every stage (per chunk where a device holds
several), the transfer time of every hop between consecutive stages (ignored where both stages live
on one device) and the share of a stage's activations its W still holds after I (the paper's
M_W / M_B). Plain immutable data, hashable, so generated schedules can be cached by it.
``StageTimes.uniform`` is the textbook default (F = I = W = 1, no communication) that keeps
``pipeplan schedule zb-v -p 4 -m 16`` working without costs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .ir import ScheduleError


@dataclass(frozen=True)
class StageTimes:
    """F, I and W per stage, a transfer time per hop (stage s -> s + 1, the same both ways), W's held share."""

    forward: tuple[float, ...]
    backward_input: tuple[float, ...]
    backward_weight: tuple[float, ...]
    comm: tuple[float, ...]
    held_fraction: float = 0.5

    def __post_init__(self) -> None:
        n = len(self.forward)
        if n < 1 or len(self.backward_input) != n or len(self.backward_weight) != n:
            raise ScheduleError(f"costs: forward, backward_input and backward_weight need one time per stage "
                                f"(got {len(self.forward)}, {len(self.backward_input)}, {len(self.backward_weight)})")
        if len(self.comm) != n - 1:
            raise ScheduleError(f"costs: comm needs one time per hop between consecutive stages ({n - 1}, got {len(self.comm)})")
        for name, values in (("forward", self.forward), ("backward_input", self.backward_input),
                             ("backward_weight", self.backward_weight), ("comm", self.comm)):
            for value in values:
                if not (value >= 0 and math.isfinite(value)):
                    raise ScheduleError(f"costs: {name} times must be finite and >= 0 (got {value})")
        if not 0 <= self.held_fraction <= 1:
            raise ScheduleError(f"costs: held_fraction is a share of the activations, 0..1 (got {self.held_fraction})")

    @property
    def num_stages(self) -> int:
        return len(self.forward)

    @staticmethod
    def uniform(num_stages: int, forward: float = 1.0, backward_input: float = 1.0, backward_weight: float = 1.0,
                comm: float = 0.0, held_fraction: float = 0.5) -> "StageTimes":
        """Every stage the same (``uniform_workload``'s setting: W holds half of F's activations)."""
        return StageTimes((float(forward),) * num_stages, (float(backward_input),) * num_stages,
                          (float(backward_weight),) * num_stages, (float(comm),) * (num_stages - 1), held_fraction)


def stage_times_for(costs: StageTimes | None, num_stages: int) -> StageTimes:
    """``costs`` checked against the schedule's stage count, or the uniform default when None."""
    if costs is None:
        return StageTimes.uniform(num_stages)
    if costs.num_stages != num_stages:
        raise ScheduleError(f"costs: the schedule has {num_stages} stages but the costs give {costs.num_stages}")
    return costs
