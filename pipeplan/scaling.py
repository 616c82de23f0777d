"""Shrinking a plan so a big preset runs on a small machine, cut points and schedule unchanged.

``pipeplan validate --scale F`` multiplies hidden size, FFN width, vocabulary, sequence length and
micro-batch size by F (rounded, hidden kept a multiple of the head count; a model's own head size
and embedding width too). The number of layers, the
layer split, the schedule and the micro-batch count stay as planned, so the run still tests the
plan's pipeline shape; only each op gets cheaper. The a-priori and calibrated predictions are made
for the scaled model, i.e. for the run that actually happened.
"""
from __future__ import annotations

from dataclasses import replace

from .errors import SpecError
from .model import ModelSpec
from .plan import Plan


def _scaled(value: int, scale: float, multiple: int = 1, minimum: int = 1) -> int:
    scaled = round(value * scale / multiple) * multiple
    return max(minimum, multiple, scaled)


def scale_model(model: ModelSpec, scale: float) -> ModelSpec:
    """``model`` with its widths multiplied by ``scale`` (1 returns it unchanged)."""
    if not 0 < scale <= 1:
        raise SpecError(f"--scale: must be in (0, 1] (got {scale})")
    if scale == 1:
        return model
    # Keep whole heads of at least 8 channels and whole kv groups, so attention keeps its shape.
    hidden = _scaled(model.hidden, scale, model.heads * 8 if model.hidden >= model.heads * 8 else model.heads)
    seq_len = _scaled(model.seq_len, scale, 8, minimum=16)
    # A head size or embedding width of its own shrinks with hidden; a position table keeps its
    # extra rows (OPT's offset of 2) beyond the sequence length.
    extra_rows = (model.position_rows - model.seq_len) if model.position_rows else None
    return replace(
        model,
        name=f"{model.name}@{scale:g}",
        hidden=hidden,
        ffn_hidden=_scaled(model.ffn_hidden, scale, 8),
        vocab=_scaled(model.vocab, scale, 8, minimum=64),
        seq_len=seq_len,
        head_dim=_scaled(model.head_dim, scale, 8) if model.head_dim else None,
        embed_dim=_scaled(model.embed_dim, scale, 8) if model.embed_dim else None,
        position_rows=seq_len + extra_rows if extra_rows is not None else None,
    )


def scale_plan(plan: Plan, model: ModelSpec, scale: float) -> Plan:
    """``plan`` on the scaled model: micro-batch size and sequence length shrink, nothing else."""
    if scale == 1:
        return plan
    seq = plan.seq_len or model.seq_len
    return plan.with_(
        model=scale_model(model, scale).to_dict(),
        microbatch_size=_scaled(plan.microbatch_size, scale),
        seq_len=_scaled(seq, scale, 8, minimum=16),
    )
