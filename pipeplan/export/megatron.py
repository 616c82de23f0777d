"""A plan as Megatron-LM arguments: parallel sizes, the pipeline layout, batch sizes, recomputation.

The layout (``--pipeline-model-parallel-layout``, Megatron-Core's ``PipelineParallelLayerLayout``) lists
the stages in model order, ``|`` between them, E the embedding, t a decoder layer, L the output layer and
loss; Megatron puts layout stage i on pipeline rank i mod PP as its virtual stage i // PP
(virtual-stage-major), which is where pipeplan's 1F1B and interleaved schedules put stage i too
(``common.LOOP``). A run of three or more equal stages is written ``(tttt|)*6``, which Megatron unrolls.
The virtual stages per rank follow from the layout (stages / PP): Megatron-LM's ``validate_args``
accepts at most one of ``--pipeline-model-parallel-layout`` and ``--num-virtual-stages-per-pipeline-rank``,
so the latter is not written.

Megatron runs its own two orders only: 1F1B (``forward_backward_pipelining_without_interleaving``) and
interleaved 1F1B (``..._with_interleaving``: micro-batches in groups of
``--microbatch-group-size-per-virtual-pipeline-stage``, default PP, at least PP and at most m; pipeplan's
interleaved uses groups of m // max(1, m // p), the same order). Recomputation is one setting for every
stage (``--recompute-granularity full|selective``, ``--recompute-method uniform|block``,
``--recompute-num-layers N``): ``uniform`` with N = 1 keeps every layer's input, as pipeplan's full
recomputation does; ``block`` recomputes the first N layers of every stage. A plan that reduces
gradients while the backward runs (``overlap_grad_reduce``, with dp > 1) gets ``--overlap-grad-reduce``.
"""
from __future__ import annotations

from ..errors import SpecError
from ..lowering import Resolved
from .common import LOOP, Export, ExportOptions, decoder_layers, placement, shell_arguments, stage_contents

SCHEDULES = ("1f1b", "interleaved")  # what Megatron-LM runs: its 1F1B and its interleaved 1F1B
RUN_MIN = 3  # equal consecutive stages written as one (X|)*n
# Every layer recomputed, each keeping its input: pipeplan's full recomputation on every stage.
FULL_EVERYWHERE = (("--recompute-granularity", "full"), ("--recompute-method", "uniform"),
                   ("--recompute-num-layers", "1"))


def refusal(schedule: str, pp: int, m: int, v: int) -> str | None:
    """Why Megatron-LM cannot run ``schedule`` at (pp, m, v), or None when it can."""
    if schedule not in SCHEDULES:
        return (f"Megatron-LM runs 1f1b and interleaved (its 1F1B and interleaved 1F1B schedules), not {schedule}; "
                "re-plan with `pipeplan optimize --target megatron`, or export to torchtitan or torch-csv")
    if schedule == "interleaved" and pp < 2:
        return f"Megatron's interleaved schedule needs pp >= 2 (the plan has pp = {pp})"
    if schedule == "interleaved" and m < pp:
        return (f"Megatron's interleaved schedule needs at least pp = {pp} micro-batches (the plan has m = {m}): "
                "its micro-batch groups hold between pp and m of them")
    return None


def layout(contents: list[str]) -> str:
    """Megatron's layout string of the stages' contents (model order), runs of ``RUN_MIN`` or more equal
    stages written ``(X|)*n``."""
    out, i, n = [], 0, len(contents)
    while i < n:
        j = i
        while j < n and contents[j] == contents[i]:
            j += 1
        run, last = j - i, j == n
        if run >= RUN_MIN:
            # (X|)*k carries its own separators; a run that ends the layout leaves its last stage outside.
            out.append(f"({contents[i]}|)*{run - 1}{contents[i]}" if last else f"({contents[i]}|)*{run}")
        else:
            out.append("|".join(contents[i:j]) + ("" if last else "|"))
        i = j
    return "".join(out)


def group_size(pp: int, m: int) -> int:
    """Micro-batches per group of pipeplan's (and torch's) interleaved order: m over its max(1, m // pp) rounds."""
    return m // max(1, m // pp)


def recompute_arguments(modes: list[str], blocks: list[int], superset: bool) -> tuple[list[tuple[str, ...]], list[str]]:
    """Megatron's recomputation flags for per-stage ``modes`` (stages with ``blocks`` decoder layers), and notes.

    Stages without decoder layers (embedding or head alone) recompute nothing in Megatron, so their mode
    does not matter. One mode everywhere maps exactly; a list that differs by stage is refused unless
    ``superset``, which recomputes at least what the plan does: selective everywhere when the plan mixes
    none and selective, else full recomputation of the first N layers of every stage (``block``), N the
    largest recomputing stage's layers (``uniform`` when that is every layer of every stage).
    """
    used = [(mode, n) for mode, n in zip(modes, blocks) if n > 0]
    kinds = sorted({mode for mode, _ in used})
    if kinds in ([], ["none"]):
        return [], []
    if kinds == ["full"]:
        return list(FULL_EVERYWHERE), []
    if kinds == ["selective"]:
        return [("--recompute-granularity", "selective")], []
    listed = ", ".join(f"{mode} x{modes.count(mode)}" for mode in ("none", "selective", "full") if mode in modes)
    if not superset:
        raise SpecError(f"plan.recompute: Megatron-LM takes one recomputation setting for every stage, the plan "
                        f"differs by stage ({listed}); re-plan with `pipeplan optimize --target megatron`, or "
                        "pass --recompute-superset to recompute at least as much everywhere")
    more = [k for k, (mode, n) in enumerate(zip(modes, blocks)) if n > 0 and mode == "none"]
    if "full" not in kinds:
        note = f"recompute superset: stages {_stages(more)} recompute selectively, the plan recomputes nothing there"
        return [("--recompute-granularity", "selective")], [note]
    n = max(blocks[k] for k, mode in enumerate(modes) if mode != "none")
    partial = [k for k, (mode, count) in enumerate(zip(modes, blocks)) if count > 0 and mode != "full"]
    if n >= max(blocks):
        flags = list(FULL_EVERYWHERE)
        note = f"recompute superset: every stage recomputes fully; the plan does not on stages {_stages(partial)}"
    else:
        flags = [("--recompute-granularity", "full"), ("--recompute-method", "block"),
                 ("--recompute-num-layers", str(n))]
        note = (f"recompute superset: the first {n} layers of every stage recompute fully; the plan recomputes less "
                f"on stages {_stages(partial)}")
    return flags, [note]


def _stages(stages: list[int]) -> str:
    return ",".join(map(str, stages))


def export_megatron(resolved: Resolved, options: ExportOptions) -> Export:
    """The plan as Megatron-LM command-line arguments (module docstring); SpecError (one line) for a plan
    Megatron cannot run or express."""
    plan, model, schedule = resolved.plan, resolved.model, resolved.schedule
    why = "its schedule is a custom CSV" if plan.schedule == "custom" else refusal(
        plan.schedule, plan.pp, plan.num_microbatches, plan.chunks)
    if why:
        raise SpecError(f"plan.schedule: {why}")
    if placement(schedule) != LOOP:  # Megatron's layout puts stage i on rank i mod PP
        raise SpecError(f"plan.schedule: {plan.schedule} places stages {list(schedule.stage_to_device)} on devices; "
                        "Megatron's layout puts stage i on pipeline rank i mod pp")
    interleaved = plan.chunks > 1
    if interleaved and plan.pp == 2 and plan.blocking_p2p:
        raise SpecError("plan.blocking_p2p: Megatron runs interleaved at pp = 2 only with "
                        "--overlap-p2p-communication, which a blocking plan excludes; set blocking_p2p to false")
    contents = stage_contents(model, plan)
    blocks = decoder_layers(contents)
    modes = [plan.recompute_mode(k) for k in range(plan.num_stages)]
    recompute, notes = recompute_arguments(modes, blocks, options.recompute_superset)
    args: list[tuple[str, ...]] = [("--tensor-model-parallel-size", str(plan.tp)),
                                   ("--pipeline-model-parallel-size", str(plan.pp))]
    if plan.num_stages > 1:
        args.append(("--pipeline-model-parallel-layout", layout(contents)))
    m, b = plan.num_microbatches, plan.microbatch_size
    args += [("--num-layers", str(model.num_layers)), ("--seq-length", str(resolved.seq_len)),
             ("--micro-batch-size", str(b)), ("--global-batch-size", str(b * m * plan.dp))]
    if interleaved:
        g = group_size(plan.pp, m)
        if g != plan.pp:
            args.append(("--microbatch-group-size-per-virtual-pipeline-stage", str(g)))
        if not plan.blocking_p2p:
            args.append(("--overlap-p2p-communication",))
    if plan.sequence_parallel:
        args.append(("--sequence-parallel",))
    if plan.distributed_optimizer:
        args.append(("--use-distributed-optimizer",))
    if plan.dp > 1 and plan.overlap_grad_reduce:
        args.append(("--overlap-grad-reduce",))
    args += recompute
    notes = [f"launch on tp x pp x dp = {plan.tp} x {plan.pp} x {plan.dp} = {plan.num_gpus} GPUs; Megatron derives "
             f"dp = {plan.dp} from the world size"] + notes
    if interleaved:
        notes.append(f"{plan.chunks} virtual stages per pipeline rank, from the layout's {plan.num_stages} stages "
                     "(Megatron-LM refuses --num-virtual-stages-per-pipeline-rank beside a layout)")
    elif plan.pp > 1 and not plan.blocking_p2p:
        notes.append("Megatron's 1F1B waits for each point-to-point exchange, the plan let sends overlap compute; "
                     "set \"blocking_p2p\": true in the plan for `pipeplan simulate` to predict Megatron's run")
    if plan.scatter_gather_p2p:
        notes.append("the plan scatters pipeline messages over the tensor ranks, as Megatron-LM of 2021 did by "
                     "default (--no-scatter-gather-tensors-in-pipeline turned it off); current Megatron-LM has no "
                     "such option")
    notes.append("model-shape flags (--hidden-size, --num-attention-heads, --ffn-hidden-size, ...) are not written")
    return Export("megatron", shell_arguments(args), notes=tuple(notes))
