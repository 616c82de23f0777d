"""The band flags and lines that ``simulate`` and ``optimize`` share (``pipeplan.bands``).

``--band-samples N`` (default ``DEFAULT_SAMPLES``), ``--band-seed S``, ``--no-band``. Given
explicitly, a sample count past the band-ops limit is refused before any work; the default count
shrinks to what the limit allows and the band is left out, saying so, below ``MIN_SAMPLES``.
"""
from __future__ import annotations

import argparse

from ..bands import DEFAULT_SAMPLES, PlanBand, affordable_samples, check_band_size
from ..limits import RANGES, limit, plan_ops
from .argtypes import count
from .output import fmt_pct, fmt_time

MIN_SAMPLES = int(RANGES["band_samples"].low)


def seed(text: str) -> int:
    """A seed: a whole number 0 .. 2^63 - 1."""
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (got {text!r})") from None
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be a whole number in 0 .. 2^63 - 1 (got {text!r})")
    return value


def samples_count(text: str) -> int:
    """A sample count within ``RANGES["band_samples"]``."""
    r = RANGES["band_samples"]
    value = count(text)
    if not r.low <= value <= r.high:
        raise argparse.ArgumentTypeError(f"must be {r.text()} (got {text!r}): a 90 % interval needs some samples "
                                         "in each 5 % tail")
    return value


def add_band_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--band-samples", type=samples_count, default=None, metavar="N",
                   help=f"samples of the 90 %% band (op and link times drawn from their spread, the plan simulated "
                        f"again; default {DEFAULT_SAMPLES}, fewer for a plan too large for that)")
    p.add_argument("--band-seed", type=seed, default=0, metavar="S", help="seed of the band's draws (default 0)")
    p.add_argument("--no-band", action="store_true", help="leave the band out")


def band_samples(args: argparse.Namespace, plan, runs: int = 1) -> tuple[int | None, str | None]:
    """(samples, None), or (None, why the band is left out). Explicit ``--band-samples`` past the limit is
    a SpecError (one line, exit 2), raised here, before any work."""
    if args.no_band:
        return None, None
    if args.band_samples is not None:
        check_band_size(plan, args.band_samples, runs, "--band-samples")
        return args.band_samples, None
    samples = affordable_samples(plan, runs)
    if samples is None:
        ops = max(1, plan_ops(plan)) * runs
        return None, (f"band left out: {MIN_SAMPLES} samples x {ops:,} ops is over the band limit of "
                      f"{limit('band_ops'):,} (raise it with PIPEPLAN_MAX_BAND_OPS=N)")
    return samples, None


def band_line(band: PlanBand, steady: bool = False) -> str:
    """One line: the interval of iteration time, bubble and throughput, and what it rests on."""
    t, b, w = band.iteration_time, band.bubble_fraction, band.tokens_per_second
    what = "one isolated iteration" if steady else ""
    return (f"{100 * band.level:.0f} % band{' (' + what + ')' if what else ''}: iteration {fmt_time(t.low)} .. "
            f"{fmt_time(t.high)}  bubble {fmt_pct(b.low)} .. {fmt_pct(b.high)}  {w.low:,.0f} .. {w.high:,.0f} "
            f"tokens/s  ({band.samples} samples, seed {band.seed}; {band.spread.source})")
