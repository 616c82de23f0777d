"""One palette for every chart: a colour per op kind, lighter shades for later chunks."""
from __future__ import annotations

KIND_COLORS = {
    "F": "#3b6fb6",  # forward: blue
    "B": "#c8443a",  # full backward: red
    "I": "#e8893a",  # input gradient: orange
    "W": "#4a9d5b",  # weight gradient: green
    "UNSHARD": "#8c6bb1",  # communication stream: purples and teal
    "RESHARD": "#e9c46a",
    "REDUCE_GRAD": "#2a9d8f",
    "GATHER_PARAMS": "#6d597a",
    "OPTIMIZER": "#264653",  # the optimizer step runs on the compute stream
}
KIND_LABELS = {"F": "F forward", "B": "B full backward", "I": "I input gradient", "W": "W weight gradient",
               "UNSHARD": "DP: gather parameters", "RESHARD": "DP: free gathered parameters",
               "REDUCE_GRAD": "DP: reduce gradients", "GATHER_PARAMS": "DP: gather parameters after the step",
               "OPTIMIZER": "optimizer step"}
# Communication lanes (Gantt bands, trace threads), one per category of ``pipeplan.breakdown.COMM_CATEGORY``.
LANE_NAMES = {"dp": "DP communication", "tp": "TP communication", "other": "communication (other)"}
TRANSFER_COLORS = {"fwd": "#7f7f7f", "bwd": "#b07aa1"}
# Forward passes of a serving run, by what they are (``pipeplan.inference.passes``).
PASS_COLORS = {"prefill": "#e8893a", "decode": "#3b6fb6"}
CAPACITY_COLOR = "#222222"


def hex_to_rgb(color: str) -> tuple[float, float, float]:
    color = color.lstrip("#")
    return tuple(int(color[i:i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def shade(kind: str, chunk: int, chunks: int) -> tuple[float, float, float]:
    """The kind's colour, mixed towards white for later chunks so chunk 0 is darkest."""
    r, g, b = hex_to_rgb(KIND_COLORS[kind])
    if chunks <= 1:
        return r, g, b
    mix = 0.55 * chunk / (chunks - 1)
    return r + (1 - r) * mix, g + (1 - g) * mix, b + (1 - b) * mix


def time_scale(span: float, unit: str | None) -> tuple[float, str]:
    """Multiplier and label for a time axis: abstract units stay as they are, seconds get s/ms/us."""
    if unit == "unit":
        return 1.0, "time (units of one stage's work)"
    if span >= 1.0:
        return 1.0, "time (s)"
    if span >= 1e-3:
        return 1e3, "time (ms)"
    return 1e6, "time (us)"
