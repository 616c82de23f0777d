"""Regenerate every committed figure: ``pipeplan figures`` (or ``python -m pipeplan.charts.figures``)."""
from __future__ import annotations

import sys
from pathlib import Path

from simulator.engine import simulate as simulate_workload
from simulator.schedules import DEFAULT_SCHEDULES, build_schedule
from simulator.workload import uniform_workload

from ..api import simulate
from ..errors import SpecError
from ..fileio import check_output_folder, output_target
from ..plan import Plan
from .bubble import bubble_vs_microbatches
from .gantt import describe, draw_gantt, gantt_panels, side_by_side
from .memory import memory_panels
from .render import pyplot, save_figure
from .serving import serving_figure

P, M = 4, 8


def uniform_result(name: str, p: int = P, m: int = M):
    """F = B = W = 1 per device's worth of work: a chunked schedule's stages take 1/v each."""
    schedule = build_schedule(name, p, m)
    t = 1.0 / schedule.chunks
    result = simulate_workload(uniform_workload(schedule, t, t, t))
    result.timeline.meta["time_unit"] = "unit"
    return result


def count_in_words(n: int) -> str:
    """Small counts as a title writes them ("six schedules"), larger ones as digits."""
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
    return words[n] if n < len(words) else str(n)


def schedules_figure(path: Path) -> None:
    results = [uniform_result(name) for name in DEFAULT_SCHEDULES]
    xmax = max(r.iteration_time for r in results)
    plt = pyplot()
    fig, axes = plt.subplots(len(results), 1, figsize=(13, 2.1 * len(results)), sharex=True)
    timelines = [r.timeline for r in results]
    for k, (ax, result) in enumerate(zip(axes, results)):
        draw_gantt(ax, result.timeline, xmax=xmax, legend=k == 0, legend_from=timelines)
        if k < len(results) - 1:
            ax.set_xlabel("")
    fig.suptitle(f"The {count_in_words(len(results))} schedules at p={P}, m={M}, same work per device "
                 "(F = B = W = 1; chunks split it)",
                 x=0.01, ha="left", fontsize=11)
    fig.tight_layout()
    save_figure(fig, str(path))


def memory_figure(path: Path) -> None:
    panels = []
    for name in ("gpipe", "1f1b", "zb-h2"):
        result = uniform_result(name, P, 16)
        panels.append((describe(result.timeline), result.memory, None))
    memory_panels(panels, str(path), unit="unit")


def preset_plan() -> Plan:
    """llama3-8b over two DGX H100 nodes: 8 pipeline devices, data-parallel 2, so stage 3 -> 4 crosses IB."""
    return Plan(model="llama3-8b", cluster="dgx-h100", nodes=2, dp=2, schedule="1f1b", pp=8, num_microbatches=16,
                microbatch_size=1, layers_per_stage=(4, 4, 4, 4, 5, 5, 4, 4))


def preset_figure(path: Path) -> None:
    result = simulate(plan=preset_plan())
    timeline = result.timeline
    timeline.meta["label"] = "llama3-8b on 2x dgx-h100 (pp=8, dp=2), 1f1b"
    # Zoom into the steady state around the inter-node hop so transfers are wide enough to see.
    f = next(o for o in timeline.ops if o.device == 4 and o.action.kind == "B" and o.action.microbatch == 4)
    window = (f.start - 0.12 * result.iteration_time / 8, f.end + 0.02 * result.iteration_time)
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(13, 8.5))
    draw_gantt(axes[0], timeline)
    draw_gantt(axes[1], timeline, window=window, legend=False,
               title="zoom: transfers (thin lane under each row): NVLink inside a node, InfiniBand between devices 3 and 4")
    fig.tight_layout()
    save_figure(fig, str(path))


# Zero Bubble's 6.2B model at p = 8, m = 24: its measured T_F, T_B, T_W and T_comm (Table 9), in seconds.
ZB_TIMES = (29.718e-3, 29.444e-3, 19.927e-3, 0.527e-3)
ZB_COMPARED = ("1f1b", "zb-h1", "zb-h2", "zb-1p", "zb-2p", "zb-v", "interleaved", "dualpipe-v")


def zero_bubble_result(name: str, p: int = 8, m: int = 24, times: tuple = ZB_TIMES):
    """``name`` on equal stages with the given (F, B, W, comm): a chunked schedule's stages take 1/v
    of each time; the cost-aware ones are ordered from these times."""
    from simulator.schedules import SCHEDULES
    from simulator.stage_times import StageTimes

    f, b, w, comm = times
    entry = SCHEDULES[name]
    v = entry.default_chunks
    costs = StageTimes.uniform(p * v, f / v, b / v, w / v, comm) if entry.cost_aware else None
    schedule = build_schedule(name, p, m, v, costs)
    result = simulate_workload(uniform_workload(schedule, f / v, b / v, w / v, comm))
    result.timeline.meta["label"] = entry.display_name
    return result


def zero_bubble_figure(path: Path) -> None:
    """The zero-bubble family next to 1F1B, interleaved and DualPipeV on the paper's 6.2B costs: the
    bubble over the longest device span (the paper's bubble rate) as bars, then every schedule's Gantt
    rows on one time axis."""
    results = [zero_bubble_result(name) for name in ZB_COMPARED]
    xmax = max(r.iteration_time for r in results)
    plt = pyplot()
    fig, axes = plt.subplots(len(results) + 1, 1, figsize=(13, 2.5 * len(results) + 2.6),
                             gridspec_kw={"height_ratios": [1.4] + [1.0] * len(results)})
    rates = [100 * r.span_bubble_fraction for r in results]
    labels = [r.timeline.meta["label"] for r in results]
    bars = axes[0].barh(range(len(results)), rates, color="#4e79a7")
    axes[0].bar_label(bars, labels=[f"{x:.2f} %" for x in rates], padding=3, fontsize=8)
    axes[0].set_yticks(range(len(results)), labels, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_xlim(0, max(rates) * 1.15)
    axes[0].set_xlabel("bubble over the longest device span, % (Zero Bubble's bubble rate)")
    axes[0].set_title("Zero Bubble's 6.2B model, p = 8, m = 24: T_F 29.7, T_B 29.4, T_W 19.9, T_comm 0.53 ms "
                      "(Table 9); chunked schedules split each time in v", loc="left", fontsize=10)
    timelines = [r.timeline for r in results]
    for k, (ax, result) in enumerate(zip(axes[1:], results)):
        title = (f"{describe(result.timeline)}; "
                 f"longest device span {1e3 * max(result.device_span):.0f} ms, "
                 f"bubble over it {100 * result.span_bubble_fraction:.2f} %")
        draw_gantt(ax, result.timeline, xmax=xmax, legend=k == 0, legend_from=timelines, title=title,
                   show_transfers=False)
        if k < len(results) - 1:
            ax.set_xlabel("")
    fig.tight_layout()
    save_figure(fig, str(path))


REPO = Path(__file__).resolve().parents[2]
VALIDATION_RECORD = REPO / "validation" / "records" / "cpu-gloo-tiny-zb-h1-p2.json"


def validation_figure(path: Path) -> None:
    """A recorded real run (committed, so this redraws without re-running): the calibrated prediction
    re-made with today's simulator above, the measured iteration below."""
    import json

    from simulator.timeline import Timeline

    from ..validation import predictions
    from ..validation.report import timed_step

    record = json.loads(VALIDATION_RECORD.read_text())
    measured = Timeline.from_dict(record["measured"]["timeline"])
    calibrated, _ = predictions(Plan.from_dict(record["plan"]), VALIDATION_RECORD.parents[1] / record["run"]["base_dir"],
                                record["profile"], timed_step([measured]))
    predicted = Timeline.from_dict(calibrated["timeline"])
    side_by_side(predicted, measured, str(path), ("predicted (calibrated)", "measured, 2 CPU ranks, gloo"),
                 show_transfers=False)


def planner_figure(path: Path) -> None:
    """llama3-8b, pp = 8, 1F1B: Megatron's uniform split against the planner's, on one time axis."""
    from ..api import simulate
    from ..model import load_model
    from ..planner.baselines import megatron_uniform
    from ..planner.optimize import optimize

    found = optimize("llama3-8b", "dgx-h100", global_batch=64, pp=8, schedules=["1f1b"], time_limit=1.0)
    # Simulated here rather than read from the baselines, which a search past its time limit leaves out.
    split = megatron_uniform(load_model("llama3-8b"), found.plan.num_stages)
    uniform = simulate(plan=found.plan.with_(layers_per_stage=split, recompute=()))
    panels = [(uniform.plan, uniform.timeline, "Megatron uniform split"),
              (found.plan, found.chosen.result.timeline, "pipeplan optimize")]
    titles = [f"{label} {' '.join(map(str, plan.layers_per_stage))}: {describe(timeline)}"
              for plan, timeline, label in panels]
    gantt_panels([timeline for _, timeline, _ in panels], str(path), titles=titles, show_transfers=False)


FIGURES = {
    "schedules.png": schedules_figure,
    "bubble_vs_microbatches.png": lambda path: bubble_vs_microbatches(str(path), p=P),
    "memory_gpipe_1f1b_zbh2.png": memory_figure,
    "llama3-8b_dgx-h100.png": preset_figure,
    "planner_llama3-8b_uniform_vs_optimized.png": planner_figure,
    "validation_zb-h1_cpu.png": validation_figure,
    "zero_bubble_6.2b_p8_m24.png": zero_bubble_figure,
    "inference_llama3-70b_dgx-h100.png": serving_figure,
}


def check_figures_folder(folder: str | Path, field: str = "--out") -> None:
    """Refuse, before anything is drawn, a folder the figures may not go into (``fileio.check_output_folder``)
    or a figure name there that may not be written (a folder of that name, say: ``fileio.output_target``)."""
    check_output_folder(folder, field)
    if Path(folder).is_dir():
        for name in FIGURES:
            output_target(Path(folder) / name, f"{field} ({name})")


def regenerate(folder: str | Path = "figures") -> list[Path]:
    """Draw every figure of ``FIGURES`` into ``folder`` (created if missing); the paths written."""
    check_figures_folder(folder)
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpecError(f"--out: cannot create the folder {str(out)!r}: {err.strerror}") from None
    written = []
    for name, draw in FIGURES.items():
        draw(out / name)
        written.append(out / name)
    return written


if __name__ == "__main__":
    for written_path in regenerate(sys.argv[1] if len(sys.argv) > 1 else "figures"):
        print(f"wrote {written_path}")
