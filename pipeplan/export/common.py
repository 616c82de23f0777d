"""What every exporter shares: its options, what it returns, stage contents and placement, shell quoting."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Sequence

from simulator.ir import Schedule

from ..errors import SpecError
from ..model import BLOCK, EMBEDDING, HEAD, ModelSpec
from ..plan import Plan

CSV_FORMATS = ("compute_only", "compute_comms")  # torch's ``_load_csv(..., format=...)``


@dataclass(frozen=True)
class ExportOptions:
    """``recompute_superset``: Megatron and torchtitan take one recomputation setting for every stage; with this, a
    per-stage list that differs by stage is exported as the nearest setting that recomputes at least what
    the plan does (else it is refused). ``csv_format``: torch's CSV format (``CSV_FORMATS``).
    ``schedule_csv``: the path torchtitan's options name for the schedule CSV, needed when torch has no
    schedule class for the plan's order (the CSV is then written there)."""

    recompute_superset: bool = False
    csv_format: str = "compute_only"
    schedule_csv: str | None = None

    def __post_init__(self) -> None:
        if self.csv_format not in CSV_FORMATS:
            raise SpecError(f"--csv-format: {self.csv_format!r} is not one of {', '.join(CSV_FORMATS)}")


@dataclass(frozen=True)
class Export:
    """An exporter's answer: ``text`` (arguments or a CSV), ``schedule_csv`` (torchtitan: the CSV text to
    write at ``ExportOptions.schedule_csv``, None when torch's own class runs the plan's order) and
    ``notes``, what the user has to know that the text cannot say (one line each)."""

    target: str
    text: str
    schedule_csv: str | None = None
    notes: tuple[str, ...] = ()


LAYER_LETTERS = {EMBEDDING: "E", BLOCK: "t", HEAD: "L"}  # Megatron's layout letters: embedding, decoder, loss


def stage_contents(model: ModelSpec, plan: Plan) -> list[str]:
    """Per stage, in model order, its pipeline layers as letters: E (embedding), t (block), L (head + loss)."""
    kinds = model.layer_kinds
    return ["".join(LAYER_LETTERS[kinds[i]] for i in plan.stage_layers(k)) for k in range(plan.num_stages)]


def decoder_layers(contents: Sequence[str]) -> list[int]:
    """Transformer blocks per stage (a pipeplan stage also counts the embedding and the head)."""
    return [text.count("t") for text in contents]


LOOP, V_SHAPE = "loop", "v"


def placement(schedule: Schedule) -> str | None:
    """How the schedule places stages on devices: ``LOOP`` (stage s on device s mod p: 1F1B, interleaved),
    ``V_SHAPE`` (device d holds stages d and 2p-1-d: ZB-V, DualPipeV) or None (anything else)."""
    p, owner = schedule.num_devices, schedule.stage_to_device
    if all(d == s % p for s, d in enumerate(owner)):
        return LOOP
    if len(owner) == 2 * p and all(owner[s] == (s if s < p else 2 * p - 1 - s) for s in range(2 * p)):
        return V_SHAPE
    return None


def shell_arguments(args: Sequence[tuple[str, ...]]) -> str:
    """Flags and their values, one flag per line joined by backslash-newlines, each word quoted for a POSIX
    shell: paste it after a launch command, or ``eval "cmd $(cat FILE)"``."""
    return " \\\n".join(" ".join(shlex.quote(str(word)) for word in arg) for arg in args) + "\n"
