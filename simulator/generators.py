"""Schedule generators: pure functions ``(num_devices, num_microbatches[, chunks]) -> Schedule``.

Each docstring names the paper or code its order comes from. Each generator starts with its
rule (``one_stage_rule``, ``interleaved_rule``, ``zb_v_rule``; the cost-aware ZB-V, ZB-1p and ZB-2p
live in ``vshape`` and ``zb_auto``): the one check of which
(p, m, v) it accepts, raising ScheduleError with the values that work. The registry
(``simulator.schedules``) points at the same rule, so the planner enumerates exactly what
the generators build.
"""
from __future__ import annotations

from .checker import check_schedule
from .ir import (
    BACKWARD_INPUT,
    BACKWARD_WEIGHT,
    FORWARD,
    FULL_BACKWARD,
    Action,
    Schedule,
    ScheduleError,
    make_schedule,
)


def _require_positive(p: int, m: int) -> None:
    if p < 1:
        raise ScheduleError(f"devices must be at least 1 (got {p})")
    if m < 1:
        raise ScheduleError(f"microbatches must be at least 1 (got {m})")


def one_stage_rule(name: str, p: int, m: int, v: int) -> None:
    """Accept p, m >= 1 and v = 1: the schedule ``name`` holds one stage per device."""
    _require_positive(p, m)
    if v != 1:
        raise ScheduleError(f"chunks: {name} holds one stage per device; use --chunks 1 (got {v})")


def interleaved_rule(p: int, m: int, v: int) -> None:
    """Accept p, m >= 1, v >= 2, and m divisible by the number of rounds max(1, m // p).

    Micro-batches advance in rounds of equal groups (see ``interleaved``), so m must split evenly.
    """
    _require_positive(p, m)
    if v < 2:
        raise ScheduleError(f"chunks: interleaved needs at least 2 chunks per device (got {v}); use 1f1b for 1")
    check_rounds("interleaved", p, m)


def check_rounds(name: str, p: int, m: int) -> None:
    """Micro-batches advance in rounds of max(1, m // p) (Megatron's and torch's looped schedules): m must
    split into them evenly; the error lists the m that do."""
    if m % max(1, m // p):
        good = [k for k in range(1, 4 * p + 1) if k % max(1, k // p) == 0]
        raise ScheduleError(
            f"microbatches: {name} needs m divisible by its number of rounds max(1, m // p), as torch does; "
            f"with p={p} these work: {', '.join(map(str, good))}, ... (any multiple of p)"
        )


def zb_v_rule(p: int, m: int, v: int) -> None:
    """Accept p, m >= 1 and v = 2: the V shape gives every device exactly two chunks."""
    _require_positive(p, m)
    if v != 2:
        raise ScheduleError(f"chunks: zb-v holds exactly 2 chunks per device; use --chunks 2 (got {v})")


def gpipe(p: int, m: int, v: int = 1) -> Schedule:
    """GPipe (Huang et al. 2018): all forwards, then all backwards, one stage per device.

    Bubble (p-1)/(m+p-1); device 0 keeps all m micro-batches' activations alive.
    """
    one_stage_rule("gpipe", p, m, v)
    device_actions = [
        [Action(d, FORWARD, k) for k in range(m)] + [Action(d, FULL_BACKWARD, k) for k in range(m)]
        for d in range(p)
    ]
    return make_schedule(device_actions, range(p), m, "gpipe")


def one_f_one_b(p: int, m: int, v: int = 1) -> Schedule:
    """1F1B / PipeDream-Flush as in Megatron's ``forward_backward_pipelining_without_interleaving``.

    Device r runs ``min(p - r - 1, m)`` warm-up forwards, then alternates one forward and one
    backward, then drains the remaining backwards. Bubble (p-1)/(m+p-1) like GPipe, but device r
    holds at most ``min(p - r, m)`` micro-batches of activations.
    """
    one_stage_rule("1f1b", p, m, v)
    device_actions = []
    for r in range(p):
        warmup = min(p - r - 1, m)
        acts = [Action(r, FORWARD, k) for k in range(warmup)]
        for k in range(m - warmup):
            acts.append(Action(r, FORWARD, warmup + k))
            acts.append(Action(r, FULL_BACKWARD, k))
        acts.extend(Action(r, FULL_BACKWARD, k) for k in range(m - warmup, m))
        device_actions.append(acts)
    return make_schedule(device_actions, range(p), m, "1f1b")


def interleaved(p: int, m: int, v: int = 2) -> Schedule:
    """Interleaved 1F1B (Narayanan et al., SC'21; Megatron ``get_pp_rank_microbatches``).

    Stage s lives on device s mod p (v chunks per device). Micro-batches advance in groups of
    g (= p when m is a multiple of p): the forward order visits chunk 0 for a group, then chunk 1,
    and so on; the backward order visits chunks in reverse. Device r warms up with
    ``(p - r - 1)·2 + (v - 1)·g`` forwards, capped at m·v. Bubble (p-1)/(v·m + p-1).
    """
    interleaved_rule(p, m, v)
    # Micro-batches per round: Megatron uses p (m % p == 0); torch generalises to m // max(1, m // p).
    g = m // max(1, m // p)
    total = m * v

    def forward_action(r: int, k: int) -> Action:
        chunk = (k // g) % v
        return Action(chunk * p + r, FORWARD, (k // (g * v)) * g + k % g)

    def backward_action(r: int, k: int) -> Action:
        chunk = v - 1 - (k // g) % v
        return Action(chunk * p + r, FULL_BACKWARD, (k // (g * v)) * g + k % g)

    device_actions = []
    for r in range(p):
        warmup = min((p - r - 1) * 2 + (v - 1) * g, total)
        acts = [forward_action(r, k) for k in range(warmup)]
        for k in range(total - warmup):
            acts.append(forward_action(r, warmup + k))
            acts.append(backward_action(r, k))
        acts.extend(backward_action(r, k) for k in range(total - warmup, total))
        device_actions.append(acts)
    schedule = make_schedule(device_actions, [s % p for s in range(p * v)], m, "interleaved", v)
    if m % p:  # torch's generalised rounds are checked; Megatron's own (g = p) is deadlock-free by construction
        check_schedule(schedule)  # (tests/test_schedules.py checks both on a grid), and checking costs 10x the build
    return schedule


def _split_backward_one_stage(name: str, p: int, m: int, warmup: list[int], held_weights: list[int]) -> Schedule:
    """One stage per device, backward split into I and W (Zero Bubble, Qi et al., ICLR'24).

    Device r runs ``warmup[r]`` forwards, then repeats (I, the W's it may no longer defer, F),
    keeping at most ``held_weights[r]`` weight-gradient passes pending, so W fills the gaps
    that in 1F1B are bubbles; pending W's run at the end.
    """
    device_actions = []
    for r in range(p):
        acts = [Action(r, FORWARD, k) for k in range(warmup[r])]
        next_f, next_i, next_w = warmup[r], 0, 0
        while next_i < m:
            acts.append(Action(r, BACKWARD_INPUT, next_i))
            next_i += 1
            while next_i - next_w > held_weights[r]:
                acts.append(Action(r, BACKWARD_WEIGHT, next_w))
                next_w += 1
            if next_f < m:
                acts.append(Action(r, FORWARD, next_f))
                next_f += 1
        acts.extend(Action(r, BACKWARD_WEIGHT, k) for k in range(next_w, m))
        device_actions.append(acts)
    return make_schedule(device_actions, range(p), m, name)


def zb_h1(p: int, m: int, v: int = 1) -> Schedule:
    """ZB-H1 (Zero Bubble, Qi et al., ICLR'24): 1F1B's warm-up and memory, W deferred to fill the drain.

    Device r defers up to r weight passes. Bubble time (p-1)(t_F + t_B - t_W) against 1F1B's
    (p-1)(t_F + t_B + t_W); peak in-flight activations as 1F1B (p on the busiest device).
    """
    one_stage_rule("zb-h1", p, m, v)
    return _split_backward_one_stage(
        "zb-h1", p, m, [min(p - r, m) for r in range(p)], list(range(p))
    )


def zb_h2(p: int, m: int, v: int = 1) -> Schedule:
    """ZB-H2, the hand-crafted zero-bubble schedule of Zero Bubble (Qi et al., ICLR'24, Figure 3).

    Device r warms up with ``2(p-1-r)+1`` forwards, so that with F = B = W its first input
    gradient arrives just as the warm-up ends, and defers up to ``2r`` weight passes, which it runs
    at the tail: every device keeps 2p-1 micro-batches in flight (the paper's (2p-1)·M_B) and
    with F = B = W the layout is the paper's parallelogram, device r busy without a gap from r·F to
    r·F + 3m·F. Uniform stages, transfers of c: the longest device span (the paper's "cost", device 0)
    is m(F+B+W) + (p-1)·max(F+B-2W+2c, B-F+2c, 0) (the paper's Table 2 bubble (p-1)(F+B-2W) when
    F+B-2W >= B-F); one isolated iteration also pays the warm-up's fill, (p-1)·max(F, F+B-2W) at c = 0.
    """
    one_stage_rule("zb-h2", p, m, v)
    return _split_backward_one_stage(
        "zb-h2", p, m, [min(2 * (p - 1 - r) + 1, m) for r in range(p)], [2 * r for r in range(p)]
    )
