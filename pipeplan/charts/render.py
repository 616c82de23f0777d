"""Saving matplotlib figures: format from the extension, written atomically, figure closed after."""
from __future__ import annotations

import io
from pathlib import Path

from ..errors import SpecError
from ..fileio import write_atomic

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def figure_format(path: str, field: str = "output") -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise SpecError(f"{field}: {path!r} needs a .png, .svg or .pdf extension")
    return fmt


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend, imported only when a chart is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 150) -> None:
    fmt = figure_format(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight", metadata={"Software": "pipeplan"} if fmt == "png" else None)
    finally:
        pyplot().close(fig)
    write_atomic(path, buffer.getvalue())
