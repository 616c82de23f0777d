"""A plan as torchtitan options (``--parallelism.*``, ``--training.*``), and its schedule CSV where torch has
no schedule class for its order.

Names as torchtitan 0.3's ``ParallelismConfig`` and ``TrainingConfig`` have them. Stages are given
exactly as ``module_fqns_per_model_part``, one part per stage in model order, with the module names of
torchtitan's decoder models (``tok_embeddings``, ``layers.<i>``, ``norm``, ``lm_head``); torchtitan places
the parts on ranks by the schedule's name: V-shaped for ZBVZeroBubble and DualPipeV (rank d holds parts
d and 2p-1-d), looped otherwise (part s on rank s mod p), as pipeplan's schedules do (``common.placement``).
Micro-batches: torchtitan splits ``training.local_batch_size`` (b·m per data-parallel rank) into
``pipeline_parallel_microbatch_size`` (b) pieces. Data parallelism: with the distributed optimizer,
FSDP (``data_parallel_shard_degree``), which also shards parameters and gradients; without, replicas
(``data_parallel_replicate_degree``).

The schedule: torch's class by name where it runs pipeplan's very order (``TORCH_ORDERS``), else the
plan's order as a compute-only CSV (``pipeline_parallel_schedule_csv``, run by torch's
``_PipelineScheduleRuntime``) with a name that only selects the placement.

Recomputation: torchtitan applies one ``activation_checkpoint`` policy to every decoder block of every
model part (the subcommand ``activation_checkpoint:none|full|selective``, written last because words
after a subcommand are its own). It is always written, since torchtitan's llama3 configs default to
selective. ``full`` is pipeplan's full recomputation (each block keeps its input); torchtitan's
``selective`` is per-op (it saves the outputs of matmuls, attention and communication, and recomputes
every second matmul and the element-wise ops), which recomputes more than pipeplan's selective
(Korthikanti's attention core only), a note says so. A per-stage list that differs by stage is refused
unless ``recompute_superset``, then written as the policy that recomputes at least what the plan does.
"""
from __future__ import annotations

from simulator.ir import to_csv
from simulator.schedules import lookup

from ..errors import SpecError
from ..lowering import Resolved
from .common import LOOP, V_SHAPE, Export, ExportOptions, decoder_layers, placement, shell_arguments, stage_contents
from .torch_csv import compute_only

# pipeplan schedules whose generator builds the order of torch's class of the same registry torch_name, and
# the (p, m, v) that class accepts: GPipe and 1F1B (torch 2.13 ``_step_microbatches``: p - r warm-up
# forwards, then one backward and one forward; its 1F1B needs m >= p), interleaved, LoopedBFS and
# InterleavedZeroBubble (torch's rounds rule, which the generators share), DualPipeV (m >= 2p, as ours).
# ZB-V is not among them: pipeplan orders it by the plan's stage costs.
TORCH_ORDERS = {
    "gpipe": lambda p, m, v: True,
    "1f1b": lambda p, m, v: m >= p,
    "interleaved": lambda p, m, v: True,
    "looped-bfs": lambda p, m, v: True,
    "interleaved-zb": lambda p, m, v: True,
    "dualpipe-v": lambda p, m, v: m >= 2 * p,
}
CSV_SCHEDULE_NAMES = {LOOP: "PipelineScheduleMulti", V_SHAPE: "ZBVZeroBubble"}  # placement only, the CSV orders


def torch_schedule_name(schedule: str, p: int, m: int, v: int) -> str | None:
    """torch's class name that runs pipeplan's ``schedule`` order at (p, m, v), or None."""
    accepts = TORCH_ORDERS.get(schedule)
    return lookup(schedule).torch_name if accepts is not None and accepts(p, m, v) else None


def module_names(contents: list[str]) -> list[str]:
    """Per stage, its modules as one comma-separated word (torchtitan's CLI form of a list of names)."""
    parts, block = [], 0
    for text in contents:
        names = []
        for letter in text:
            if letter == "E":
                names.append("tok_embeddings")
            elif letter == "t":
                names.append(f"layers.{block}")
                block += 1
            else:  # L: the final norm and the output projection
                names += ["norm", "lm_head"]
        parts.append(",".join(names))
    return parts


# pipeplan's recomputation modes, least to most recomputed, as torchtitan's activation-checkpoint subcommands.
AC_POLICY = {"none": "none", "selective": "selective", "full": "full"}
SELECTIVE_NOTE = ("torchtitan's selective checkpointing is per-op: it saves matmul, attention and communication "
                  "outputs and recomputes every second matmul and the element-wise ops, more than pipeplan's "
                  "selective (the attention core only); the plan's memory is an upper bound there")


def recompute_policy(modes: list[str], blocks: list[int], superset: bool) -> tuple[str, list[str]]:
    """torchtitan's one activation-checkpoint policy for per-stage ``modes`` (stages with ``blocks`` decoder
    layers; a stage without any, the embedding or head alone, checkpoints nothing), and notes. A list that
    differs by stage is refused unless ``superset``: then the most recomputing mode of the plan everywhere."""
    used = sorted({mode for mode, n in zip(modes, blocks) if n > 0}, key=list(AC_POLICY).index) or ["none"]
    notes = []
    if len(used) > 1:
        listed = ", ".join(f"{mode} x{modes.count(mode)}" for mode in AC_POLICY if mode in modes)
        if not superset:
            raise SpecError(f"plan.recompute: torchtitan applies one activation-checkpoint policy to every layer, "
                            f"the plan differs by stage ({listed}); re-plan with `pipeplan optimize --target "
                            "torchtitan`, or pass --recompute-superset to recompute at least as much everywhere")
        less = [str(k) for k, (mode, n) in enumerate(zip(modes, blocks)) if n > 0 and mode != used[-1]]
        notes.append(f"recompute superset: every stage checkpoints {used[-1]}; the plan recomputes less on "
                     f"stages {','.join(less)}")
    if used[-1] == "selective":
        notes.append(SELECTIVE_NOTE)
    return AC_POLICY[used[-1]], notes


def export_torchtitan(resolved: Resolved, options: ExportOptions) -> Export:
    """The plan as torchtitan command-line options (module docstring); the schedule CSV text when one is needed."""
    plan, schedule = resolved.plan, resolved.schedule
    b, m = plan.microbatch_size, plan.num_microbatches
    args: list[tuple[str, ...]] = []
    csv_text = None
    notes = [f"launch on tp x pp x dp = {plan.tp} x {plan.pp} x {plan.dp} = {plan.num_gpus} GPUs, with your "
             "--module/--config (module names are those of torchtitan's decoder models)"]
    if plan.pp > 1:
        where = placement(schedule)
        if where is None:
            raise SpecError(f"plan.schedule: {plan.schedule} places stages {list(schedule.stage_to_device)} on "
                            "devices; torchtitan places stage s on rank s mod pp, or in a V (ZBVZeroBubble, DualPipeV)")
        name = None if plan.schedule == "custom" else torch_schedule_name(plan.schedule, plan.pp, m, plan.chunks)
        if name is None:
            if not options.schedule_csv:
                raise SpecError(f"--schedule-csv: torch has no schedule class for {plan.schedule}'s order at "
                                f"pp={plan.pp} m={m} v={plan.chunks}; name the file to write the plan's order to "
                                f"(torchtitan reads it as pipeline_parallel_schedule_csv)")
            csv_text = to_csv(compute_only(schedule))
            name = CSV_SCHEDULE_NAMES[where]
        args += [("--parallelism.pipeline_parallel_degree", str(plan.pp)),
                 ("--parallelism.pipeline_parallel_schedule", name)]
        if csv_text is not None:
            args.append(("--parallelism.pipeline_parallel_schedule_csv", options.schedule_csv))
            notes.append(f"the schedule CSV path is read where torchtitan runs: {options.schedule_csv}")
        args.append(("--parallelism.module_fqns_per_model_part", *module_names(stage_contents(resolved.model, plan))))
        args.append(("--parallelism.pipeline_parallel_microbatch_size", str(b)))
    if plan.tp > 1:
        args.append(("--parallelism.tensor_parallel_degree", str(plan.tp)))
        args.append(("--parallelism.enable_sequence_parallel" if plan.sequence_parallel
                     else "--parallelism.no_enable_sequence_parallel",))
    shard, replicate = (plan.dp, 1) if plan.distributed_optimizer else (1, plan.dp)
    args += [("--parallelism.data_parallel_shard_degree", str(shard)),
             ("--parallelism.data_parallel_replicate_degree", str(replicate)),
             ("--training.local_batch_size", str(b * m)), ("--training.global_batch_size", str(b * m * plan.dp)),
             ("--training.seq_len", str(resolved.seq_len))]
    if plan.pp > 1:
        args.append(("--training.disable_cuda_graphs",))  # torchtitan refuses CUDA graphs with pipelining
    if plan.dp > 1 and plan.distributed_optimizer:
        notes.append("the distributed optimizer maps to FSDP (data_parallel_shard_degree), which also shards "
                     "parameters and gradients")
    policy, recompute_notes = recompute_policy([plan.recompute_mode(k) for k in range(plan.num_stages)],
                                               decoder_layers(stage_contents(resolved.model, plan)),
                                               options.recompute_superset)
    args.append((f"activation_checkpoint:{policy}",))  # a subcommand: last, its words would follow it
    notes += recompute_notes
    return Export("torchtitan", shell_arguments(args), csv_text, tuple(notes))
