"""Serving charts: latency against throughput for tensor/pipeline layouts of one model on one node."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..inference.api import simulate_serving
from ..inference.requests import ServingSpec
from .render import pyplot, save_figure

LAYOUTS = ((8, 1), (4, 2), (2, 4), (1, 8))  # (tp, pp) on the 8 GPUs of one node
LAYOUT_COLORS = {(8, 1): "#3b6fb6", (4, 2): "#4a9d5b", (2, 4): "#e8893a", (1, 8): "#c8443a"}
BATCHES = (1, 4, 16, 64, 256)  # requests per micro-batch
FIGURE_MIX = ServingSpec.uniform(1024, 256)


@dataclass(frozen=True)
class ServingPoint:
    """One layout at one batch size: requests in flight, its throughput and per-request latencies."""

    tp: int
    pp: int
    batch: int
    in_flight: int
    tokens_per_second: float
    tpot_p50: float
    ttft_p50: float
    latency_p99: float
    fits: bool


def serving_sweep(model: str = "llama3-70b", cluster: str = "dgx-h100", layouts=LAYOUTS, batches=BATCHES,
                  serving: ServingSpec = FIGURE_MIX) -> list[ServingPoint]:
    """Every layout at every batch size, pp micro-batches of ``batch`` requests in flight (continuous decode)."""
    points = []
    for tp, pp in layouts:
        for b in batches:
            r = simulate_serving(model=model, cluster=cluster, tp=tp, pp=pp, microbatch_size=b, serving=serving)
            points.append(ServingPoint(tp, pp, b, b * r.plan.num_microbatches, r.tokens_per_second, r.tpot.p50,
                                       r.ttft.p50, r.latency.p99, r.fits))
    return points


def serving_figure(path: Path, model: str = "llama3-70b", cluster: str = "dgx-h100") -> None:
    """Time per output token and time to first token against throughput, one line per layout; layouts that
    run out of memory at a batch size leave that point out (a cross marks where it would be)."""
    points = serving_sweep(model, cluster)
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    panels = ((axes[0], "tpot_p50", 1e3, "time per output token, p50 (ms)"),
              (axes[1], "ttft_p50", 1.0, "time to first token, p50 (s)"))
    for ax, field, scale, label in panels:
        for layout in LAYOUTS:
            mine = [p for p in points if (p.tp, p.pp) == layout]
            fits = [p for p in mine if p.fits]
            color = LAYOUT_COLORS[layout]
            ax.plot([p.tokens_per_second for p in fits], [getattr(p, field) * scale for p in fits], "-o",
                    color=color, label=f"tp={layout[0]} pp={layout[1]}", markersize=5)
            for p in fits:
                ax.annotate(str(p.in_flight), (p.tokens_per_second, getattr(p, field) * scale), fontsize=7,
                            textcoords="offset points", xytext=(4, 3), color=color)
            over = [p for p in mine if not p.fits]
            ax.plot([p.tokens_per_second for p in over], [getattr(p, field) * scale for p in over], "x",
                    color=color, markersize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.set_xlabel("throughput (output tokens/s, one node)")
        ax.set_ylabel(label)
        ax.grid(color="#dddddd", linewidth=0.5, which="both")
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)
    axes[0].legend(fontsize=8, frameon=False, loc="upper left")
    prompt, output = FIGURE_MIX.mix[0].prompt_len, FIGURE_MIX.mix[0].output_len
    fig.suptitle(f"{model} on one {cluster} (8 GPUs), continuous decode, prompts of {prompt} tokens, {output} "
                 f"generated; pp micro-batches of {', '.join(map(str, BATCHES))} requests (labels: requests in "
                 "flight; x: out of memory)", x=0.01, ha="left", fontsize=10)
    fig.tight_layout()
    save_figure(fig, str(path))
