"""The schedule registry: one frozen ``ScheduleEntry`` per named schedule, read by every consumer.

An entry holds what is known about a schedule apart from its action order: its generator (in
``generators``), the rule deciding which (p, m, v) it accepts, its default chunks, its closed-form
bubble, its analytic fill weights, the chunk counts the planner tries, and how it is named and
drawn. The simulator builds from it, the CLI and plan files take their names and default chunks
from it, the planner its variants and fill weights, the charts their closed forms and styles.

Adding a schedule: write its generator (starting with its rule) in ``generators`` or a module of
its own and add one entry to ``_ENTRIES`` below.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from types import MappingProxyType
from typing import Callable, Mapping

from .generators import (
    gpipe,
    interleaved,
    interleaved_rule,
    one_f_one_b,
    one_stage_rule,
    zb_h1,
    zb_h2,
    zb_v_rule,
)
from .dualpipe import dualpipe_v, dualpipe_v_rule
from .forward_only import continuous_decode, forward_only_rule, inference
from .ir import Schedule, ScheduleError
from .torch_orders import interleaved_zb, interleaved_zb_rule, looped_bfs, looped_bfs_rule
from .vshape_memory import v_half, v_min, v_shape_rule
from .stage_times import StageTimes
from .vshape import zb_v
from .zb_auto import zb_1p, zb_2p

ScheduleGenerator = Callable[..., Schedule]
"""``(devices p, micro-batches m, chunks per device v) -> Schedule``; a ``cost_aware`` entry's generator
also takes ``costs``, a ``StageTimes`` (None: unit times), and orders its ops by them; a ``recurrent``
one takes ``passes`` (per stream, or one count for all) and makes m streams of that many passes."""

AcceptRule = Callable[[int, int, int], None]
"""``(p, m, v) -> None``; raises ScheduleError saying why and which values work when it rejects."""


@dataclass(frozen=True)
class BubbleForm:
    """Closed-form bubble fraction when every device does the same work, F = I = W = 1 per device.

    A device's work is split over its v chunks, so each stage takes 1/v. When ``exact``,
    ``fraction(p, m, v)`` equals the simulated bubble (no communication) for every (p, m, v) the
    schedule accepts with m >= 2p; below that the warm-up and drain do not reach their steady
    shape. Otherwise it is a lower bound the generated order reaches only for some p.
    """

    formula: str  # how a chart legend writes it
    fraction: Callable[[float, float, int], float]
    exact: bool = True


@dataclass(frozen=True)
class SeriesStyle:
    """How a schedule is drawn as a series in a chart (matplotlib colour and marker)."""

    color: str
    marker: str
    # Its closed form is the same curve as an earlier schedule's: drawn dotted with a larger hollow
    # marker so the earlier series stays visible underneath.
    coincides: bool = False


@dataclass(frozen=True)
class ScheduleEntry:
    """Everything pipeplan knows about one named schedule besides its action order.

    ``fill_weights`` (a, b, c) give the per-stage time the schedule cannot hide,
    φ = a·F + b·I + c·W, chosen so that uniform stages reproduce ``bubble``: the bubble time is
    (p−1)·φ with F = I = W = 1/v per stage (the planner's analytic fill, see
    ``pipeplan.planner.problem``). ``planner_chunks`` are the chunk counts the planner tries.
    ``torch_name`` is the name torch's ``get_schedule_class`` knows it by (class
    ``Schedule<torch_name>``), None where torch has no such schedule. ``fill_weights`` None: no
    analytic fill, so the planner cannot price it. ``default_note`` None: the schedule is in the
    planner's default set and the overview figures; otherwise it says why it is not (the planner
    still plans it when named, if it has fill weights).
    """

    name: str
    display_name: str
    generator: ScheduleGenerator
    rule: AcceptRule
    default_chunks: int
    chunk_rule: str  # the chunks per device it accepts, as help texts write it
    split_backward: bool  # backward split into input-gradient I and weight-gradient W
    fill_weights: tuple[int, int, int] | None
    planner_chunks: tuple[int, ...]
    torch_name: str | None
    bubble: BubbleForm | None
    style: SeriesStyle
    default_note: str | None = None
    cost_aware: bool = False  # the order depends on the stage costs: build(..., costs=StageTimes)
    forward_only: bool = False  # no backward: its schedules are forward-only (inference)
    recurrent: bool = False  # its m micro-batches are streams of passes: build(..., passes=...)

    def check(self, p: int, m: int, v: int) -> None:
        """Raise ScheduleError (why, and what works) unless the generator accepts (p, m, v)."""
        self.rule(p, m, v)

    def accepts(self, p: int, m: int, v: int) -> bool:
        try:
            self.rule(p, m, v)
        except ScheduleError:
            return False
        return True

    def build(self, p: int, m: int, v: int | None = None, costs: StageTimes | None = None,
              passes: int | tuple[int, ...] = 1) -> Schedule:
        """The schedule for p devices and m micro-batches; ``v`` defaults to ``default_chunks``.

        ``costs`` (per-stage F, I, W and hop times) order a ``cost_aware`` schedule; the others ignore them.
        ``passes``: a ``recurrent`` schedule's passes per stream (one count, or one per stream); the others
        run one pass per micro-batch.
        """
        v = self.default_chunks if v is None else v
        if passes != 1 and not self.recurrent:
            raise ScheduleError(f"passes: {self.name} runs each micro-batch once; a schedule of several passes per "
                                f"micro-batch is {', '.join(n for n, e in SCHEDULES.items() if e.recurrent)}")
        return _built(self, p, m, v, costs if self.cost_aware else None, passes)


@lru_cache(maxsize=64)
def _built(entry: ScheduleEntry, p: int, m: int, v: int, costs: StageTimes | None,
           passes: int | tuple[int, ...] = 1) -> Schedule:
    """A generator's schedule, built once per arguments: generators are pure and a Schedule is frozen,
    and a planner search asks for the same (p, m, v) (and, for a cost-aware one, the same costs) again
    and again; each build also runs the checker."""
    if entry.cost_aware:
        return entry.generator(p, m, v, costs=costs)
    if entry.recurrent:
        return entry.generator(p, m, v, passes=passes)
    return entry.generator(p, m, v)


def _one_stage_bubble(p: float, m: float, v: int) -> float:
    return (p - 1) / (m + p - 1)


def _split_one_stage_bubble(p: float, m: float, v: int) -> float:
    # ZB-H1's (p−1)(F+B−W) and ZB-H2's fill (p−1)·max(F, F+B−2W) are both p−1 against 3m of work
    # per device when F = B = W = 1.
    return (p - 1) / (3 * m + p - 1)


def _fill_only_bubble(p: float, m: float, v: int) -> float:
    # Only the fill (p−1)·F/v is idle; each device works 3m.
    return (p - 1) / v / (3 * m + (p - 1) / v)


_AUTO_NOTE = ("ordered anew for every split the planner simulates (about 15-40 ms per order at p = 16, m = 64); "
              "kept out of the default search so its tables stay comparable; planned when named with --schedules")
_ENTRIES: tuple[ScheduleEntry, ...] = (
    ScheduleEntry(
        name="gpipe", display_name="GPipe", generator=gpipe, rule=partial(one_stage_rule, "gpipe"),
        default_chunks=1, chunk_rule="1", split_backward=False, fill_weights=(1, 1, 1), planner_chunks=(1,),
        torch_name="GPipe", bubble=BubbleForm("(p-1)/(m+p-1)", _one_stage_bubble),
        style=SeriesStyle("#7f7f7f", "o", coincides=True),
    ),
    ScheduleEntry(
        name="1f1b", display_name="1F1B", generator=one_f_one_b, rule=partial(one_stage_rule, "1f1b"),
        default_chunks=1, chunk_rule="1", split_backward=False, fill_weights=(1, 1, 1), planner_chunks=(1,),
        torch_name="1F1B", bubble=BubbleForm("(p-1)/(m+p-1)", _one_stage_bubble),
        style=SeriesStyle("#c8443a", "s"),
    ),
    ScheduleEntry(
        name="interleaved", display_name="Interleaved 1F1B", generator=interleaved, rule=interleaved_rule,
        default_chunks=2, chunk_rule="2+", split_backward=False, fill_weights=(1, 1, 1), planner_chunks=(2, 4),
        torch_name="Interleaved1F1B",
        bubble=BubbleForm("(p-1)/(vm+p-1)", lambda p, m, v: (p - 1) / (v * m + p - 1)),
        style=SeriesStyle("#8c564b", "D"),
    ),
    ScheduleEntry(
        name="zb-h1", display_name="ZB-H1", generator=zb_h1, rule=partial(one_stage_rule, "zb-h1"),
        default_chunks=1, chunk_rule="1", split_backward=True, fill_weights=(1, 1, -1), planner_chunks=(1,),
        torch_name=None, bubble=BubbleForm("(p-1)(F+B-W) / total", _split_one_stage_bubble),
        style=SeriesStyle("#e8893a", "^"),
    ),
    ScheduleEntry(
        name="zb-h2", display_name="ZB-H2", generator=zb_h2, rule=partial(one_stage_rule, "zb-h2"),
        # One iteration of the paper's parallelogram ends (p−1)·max(F, F+B−2W) after the work
        # (uniform stages, no transfers; its longest device span, the paper's steady state, is
        # (p−1)·max(F+B−2W, B−F, 0) longer than the work). The planner's linear fill takes the F
        # term: exact when B <= 2W (I ≈ W in transformers) and never above the simulated time.
        default_chunks=1, chunk_rule="1", split_backward=True, fill_weights=(1, 0, 0), planner_chunks=(1,),
        torch_name=None, bubble=BubbleForm("fill (p-1)F / total", _split_one_stage_bubble),
        style=SeriesStyle("#4a9d5b", "v", coincides=True),
    ),
    # Built from the stage costs (``costs=StageTimes``; unit times without): the Zero Bubble paper's
    # automatic schedules (zb_auto) and its V schedule (vshape).
    ScheduleEntry(
        name="zb-v", display_name="ZB-V", generator=zb_v, rule=zb_v_rule,
        default_chunks=2, chunk_rule="2", split_backward=True, fill_weights=(1, 0, 0), planner_chunks=(2,),
        torch_name="ZBVZeroBubble",
        # The fill bound; the span of every device is its work alone at unit times (the paper's zero bubble).
        bubble=BubbleForm("fill (p-1)F/v / total", _fill_only_bubble, exact=False),
        style=SeriesStyle("#3b6fb6", "P"), cost_aware=True,
    ),
    ScheduleEntry(
        name="zb-1p", display_name="ZB-1p", generator=zb_1p, rule=partial(one_stage_rule, "zb-1p"),
        default_chunks=1, chunk_rule="1", split_backward=True, fill_weights=(1, 1, -1), planner_chunks=(1,),
        torch_name=None, bubble=BubbleForm("(p-1)(F+B-W) / total", _split_one_stage_bubble, exact=False),
        style=SeriesStyle("#b07aa1", "<"), cost_aware=True, default_note=_AUTO_NOTE,
    ),
    ScheduleEntry(
        name="zb-2p", display_name="ZB-2p", generator=zb_2p, rule=partial(one_stage_rule, "zb-2p"),
        default_chunks=1, chunk_rule="1", split_backward=True, fill_weights=(1, 0, 0), planner_chunks=(1,),
        torch_name=None, bubble=BubbleForm("fill (p-1)F / total", _split_one_stage_bubble, exact=False),
        style=SeriesStyle("#ff7f0e", ">"), cost_aware=True, default_note=_AUTO_NOTE,
    ),
)

# torch's looped schedules, DualPipeV and the controllable-memory V schedules (torch_orders,
# dualpipe, vshape_memory), kept out of the planner's default set: adding candidates there would
# change the plans and search times the planner's tests and the README's tables hold.
_OUT_OF_DEFAULT = "kept out of the planner's default set and the overview figures (their answers stay as documented)"
_ENTRIES += (
    ScheduleEntry(
        name="looped-bfs", display_name="Looped BFS", generator=looped_bfs, rule=looped_bfs_rule,
        default_chunks=2, chunk_rule="1+", split_backward=False, fill_weights=(1, 1, 1), planner_chunks=(2, 4),
        torch_name="LoopedBFS",
        # Every forward of a chunk, then the next chunk's: device 0 keeps v·m chunk activations.
        bubble=BubbleForm("(p-1)/(vm+p-1)", lambda p, m, v: (p - 1) / (v * m + p - 1)),
        style=SeriesStyle("#9467bd", "X"), default_note=_OUT_OF_DEFAULT,
    ),
    ScheduleEntry(
        name="interleaved-zb", display_name="Interleaved ZB", generator=interleaved_zb, rule=interleaved_zb_rule,
        default_chunks=2, chunk_rule="1+", split_backward=True, fill_weights=(1, 0, 0), planner_chunks=(2, 4),
        torch_name="InterleavedZeroBubble",
        bubble=BubbleForm("fill (p-1)F/v / total", _fill_only_bubble),
        style=SeriesStyle("#17becf", "h"), default_note=_OUT_OF_DEFAULT,
    ),
    ScheduleEntry(
        name="dualpipe-v", display_name="DualPipeV", generator=dualpipe_v, rule=dualpipe_v_rule,
        default_chunks=2, chunk_rule="2", split_backward=True, fill_weights=(1, 2, -1), planner_chunks=(2,),
        torch_name="DualPipeV",
        # DualPipe README: (PP/2-1)(F&B+B-3W) with F&B = F+B (no overlap gain) is (p-1)(F+2I-W) per stage.
        bubble=BubbleForm("(p-1)(F&B+B-3W) / total", lambda p, m, v: (p - 1) / (3 * m + p - 1)),
        style=SeriesStyle("#bcbd22", "*"),
        default_note="the validator cannot run its overlapped F&B pairs; "
                     + _OUT_OF_DEFAULT,
    ),
    ScheduleEntry(
        name="v-half", display_name="V-Half", generator=v_half, rule=partial(v_shape_rule, "v-half"),
        default_chunks=2, chunk_rule="2", split_backward=True, fill_weights=None, planner_chunks=(2,),
        torch_name=None, bubble=None, style=SeriesStyle("#1f9e89", "<"),
        default_note="no closed-form fill (the paper gives about p/2m at F = B = W); " + _OUT_OF_DEFAULT,
    ),
    ScheduleEntry(
        name="v-min", display_name="V-Min", generator=v_min, rule=partial(v_shape_rule, "v-min"),
        default_chunks=2, chunk_rule="2", split_backward=True, fill_weights=None, planner_chunks=(2,),
        torch_name=None, bubble=None, style=SeriesStyle("#6b4c9a", ">"),
        default_note="no closed-form fill (the paper gives about 2p/3m at F = B = W); " + _OUT_OF_DEFAULT,
    ),
)

# Forward-only schedules (``forward_only``): serving, not training; the training planner has no fill for them.
_SERVING_NOTE = "forward-only (inference): simulated with `pipeplan simulate --inference`; the training planner does not plan it"
_ENTRIES += (
    ScheduleEntry(
        name="inference", display_name="Inference (fill-drain)", generator=inference,
        rule=partial(forward_only_rule, "inference"), default_chunks=1, chunk_rule="1", split_backward=False,
        fill_weights=None, planner_chunks=(1,), torch_name=None,
        bubble=BubbleForm("(p-1)/(m+p-1)", _one_stage_bubble), style=SeriesStyle("#2ca02c", "d"),
        default_note=_SERVING_NOTE, forward_only=True,
    ),
    ScheduleEntry(
        name="continuous-decode", display_name="Continuous decode", generator=continuous_decode,
        rule=partial(forward_only_rule, "continuous-decode"), default_chunks=1, chunk_rule="1",
        split_backward=False, fill_weights=None, planner_chunks=(1,), torch_name=None,
        # One pass per stream is the fill-drain; the steady state of many passes is bubble-free at m >= p.
        bubble=BubbleForm("(p-1)/(m+p-1), one pass", _one_stage_bubble), style=SeriesStyle("#d62728", "p"),
        default_note=_SERVING_NOTE, forward_only=True, recurrent=True,
    ),
)

SCHEDULES: Mapping[str, ScheduleEntry] = MappingProxyType({entry.name: entry for entry in _ENTRIES})
"""Schedule name -> its entry, in the order help texts and charts list them (read-only)."""


DEFAULT_SCHEDULES: tuple[str, ...] = tuple(e.name for e in _ENTRIES if e.default_note is None)
"""The schedules the planner tries and the overview figures draw when none are named."""


def lookup(name: str) -> ScheduleEntry | None:
    """The entry of ``name``, spelled in any case and with ``_`` for ``-``; None when unknown."""
    return SCHEDULES.get(name.lower().replace("_", "-"))


def build_schedule(name: str, p: int, m: int, v: int | None = None, costs: StageTimes | None = None,
                   passes: int | tuple[int, ...] = 1) -> Schedule:
    """Generate the named schedule; ``v`` defaults to the schedule's own chunk count, ``costs`` order a
    cost-aware one, ``passes`` set a recurrent one's passes per stream (see ``ScheduleEntry.build``)."""
    entry = lookup(name)
    if entry is None:
        raise ScheduleError(f"schedule: unknown name {name!r}; choose one of {', '.join(SCHEDULES)}")
    return entry.build(p, m, v, costs, passes)
