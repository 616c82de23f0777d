"""Round trips through the frameworks' own code: optimize -> export -> Megatron-Core's layout and config classes,
torchtitan's ConfigManager and stage placement, torch's CSV loader, ``_validate_schedule`` and dry run.

Each test skips, saying why, where its package is missing: ``pip install -e ".[interop]"`` (megatron-core,
torchtitan; see the README's "Exporting plans" for installing them beside a CPU torch without changing it).
"""
import types
import warnings
from dataclasses import fields

import pytest

import pipeplan
from pipeplan import Plan
from pipeplan.export import ExportOptions, export_plan
from pipeplan.export.megatron import group_size
from pipeplan.model import load_model
from pipeplan.specs import resolve
from simulator import build_schedule
from test_export import CPU, shell_words, tiny_plan  # tests/ is on sys.path

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")


def resolved(plan: Plan):
    return resolve(plan.model, plan.cluster, plan)


def stage_place(schedule, stage: int) -> tuple[int, int]:
    """(pipeline rank, virtual stage) of ``stage`` as pipeplan's schedule places it: its device, and its rank
    among that device's stages in model order."""
    device = schedule.stage_to_device[stage]
    return device, schedule.stages_of(device).index(stage)


def blocks_of(plan: Plan, model, stage: int) -> list[int]:
    """The block numbers (0-based, as Megatron and torchtitan count decoder layers) stage ``stage`` holds."""
    return [i - 1 for i in plan.stage_layers(stage) if model.layer_kinds[i] == "block"]


# Megatron-Core -----------------------------------------------------------------------------------------------


def megatron_config(words: list[str], model):
    """Megatron-Core's ``TransformerConfig`` built from exported flags: a flag names the field it sets as
    Megatron-LM spells it (``--x-y`` for ``x_y``, or the field's ``argparse_meta`` names;
    ``--overlap-p2p-communication`` sets ``overlap_p2p_comm``, Megatron-LM's ``dest``). Training flags (batch,
    sequence, optimizer) are returned apart. The model's shape is given here, as a user gives it."""
    import torch
    from megatron.core.transformer.transformer_config import TransformerConfig

    by_flag = {}
    for f in fields(TransformerConfig):
        meta = (f.metadata or {}).get("argparse_meta", {})
        for name in meta.get("arg_names", ["--" + f.name.replace("_", "-")]):
            by_flag[name] = f.name
    by_flag["--overlap-p2p-communication"] = "overlap_p2p_comm"
    config, training, i = {}, {}, 0
    while i < len(words):
        name, value = words[i], True
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            value, i = words[i + 1], i + 1
            value = int(value) if value.isdigit() else value
        i += 1
        (config if name in by_flag else training)[by_flag.get(name, name)] = value
    pp = config.get("pipeline_model_parallel_size", 1)
    return TransformerConfig(hidden_size=model.hidden, num_attention_heads=model.heads,
                             pipeline_dtype=torch.bfloat16 if pp > 1 else None, **config), training


def megatron_plans():
    """optimize --target megatron on tiny (interleaved) and on memory-bound llama3-8b (every stage recomputes);
    interleaved with groups of 6; a 3D 1F1B plan."""
    tiny = pipeplan.optimize("tiny", CPU, global_batch=16, pp=2, target="megatron").plan
    bound = pipeplan.optimize("llama3-8b", "pcie-l40s", gpus=4, global_batch=32, pp=4, dp=1, tp=1, microbatch_sizes=[1],
                              schedules=["1f1b"], solver_time_limit=0.5, target="megatron").plan
    six = tiny_plan("interleaved", pp=4, layers=(2, 1, 1, 1, 1, 1, 1, 2), chunks=2, m=6)
    three_d = Plan(model="llama3-8b", cluster="dgx-h100", schedule="1f1b", pp=2, tp=2, dp=2, sequence_parallel=True,
                   distributed_optimizer=True, num_microbatches=16, microbatch_size=1, layers_per_stage=(17, 17))
    return [tiny, bound, six, three_d]


def test_megatron_core_parses_the_exported_layout_to_the_plans_stages():
    pytest.importorskip("megatron.core.transformer.pipeline_parallel_layer_layout",
                        reason="megatron-core not installed (pip install -e '.[interop]')")
    from megatron.core import parallel_state
    from megatron.core.transformer.enums import LayerType

    plans = megatron_plans()
    assert plans[0].chunks > 1 and plans[1].recompute == ("full",) * 4
    for plan in plans:
        r = resolved(plan)
        words = shell_words(export_plan(r, "megatron").text)
        config, training = megatron_config(words, r.model)  # Megatron validates layout and recomputation here
        layout = config.pipeline_model_parallel_layout
        assert config.virtual_pipeline_model_parallel_size == (plan.chunks if plan.chunks > 1 else None)
        parallel_state.set_virtual_pipeline_model_parallel_world_size(plan.chunks if plan.chunks > 1 else None)
        try:
            for s in range(plan.num_stages):
                rank, vpp = stage_place(r.schedule, s)
                held = layout.layout[rank][vpp]
                assert held.count(LayerType.embedding) == (s == 0)
                assert held.count(LayerType.loss) == (s == plan.num_stages - 1)
                assert layout.get_layer_id_list(vp_stage=vpp, pp_rank=rank) == blocks_of(plan, r.model, s)
        finally:
            parallel_state.set_virtual_pipeline_model_parallel_world_size(None)
        modes = set(plan.recompute) or {"none"}
        assert config.recompute_granularity == (None if modes == {"none"} else modes.pop())
        assert config.sequence_parallel == plan.sequence_parallel and config.tensor_model_parallel_size == plan.tp
        assert training["--global-batch-size"] == plan.microbatch_size * plan.num_microbatches * plan.dp
        assert training["--micro-batch-size"] == plan.microbatch_size
        assert ("--use-distributed-optimizer" in training) == plan.distributed_optimizer
        if plan.chunks > 1:
            assert config.microbatch_group_size_per_vp_stage == group_size(plan.pp, plan.num_microbatches)


def test_pipeplans_interleaved_order_is_megatron_cores():
    """Megatron-Core's interleaved schedule, rebuilt from its own schedule table and warm-up count: rank r runs
    forward k < warm-up, then forward k + warm-up and backward k, then the remaining backwards, virtual
    micro-batch k being (micro-batch, chunk) = table[k] (backward: chunk v-1-c), chunk c of rank r stage c·p + r."""
    schedules = pytest.importorskip("megatron.core.pipeline_parallel.schedules",
                                    reason="megatron-core not installed (pip install -e '.[interop]')")
    compared = 0
    for p in (2, 3, 4):
        for v in (2, 3):
            for m in range(p, 3 * p + 2):
                g = group_size(p, m)
                if m % max(1, m // p) or not (p <= g <= m) or 0 < m % g < p:
                    continue  # pipeplan or Megatron refuses
                table = schedules.get_schedule_table(m, v, g)
                ours = build_schedule("interleaved", p, m, v)
                for r in range(p):
                    stub = types.SimpleNamespace(pp_group=types.SimpleNamespace(size=lambda: p, rank=lambda: r),
                                                 virtual_pipeline_model_parallel_size=v)
                    total, _, warmup, remaining = schedules.get_pp_rank_microbatches(m, v, g, p2p_communicator=stub)
                    fwd = [f"{table[k][1] * p + r}F{table[k][0]}" for k in range(total)]
                    bwd = [f"{(v - 1 - table[k][1]) * p + r}B{table[k][0]}" for k in range(total)]
                    order = fwd[:warmup] + [a for k in range(remaining) for a in (fwd[k + warmup], bwd[k])] \
                        + bwd[remaining:]
                    assert order == [str(a) for a in ours.device_actions[r]], (p, v, m, r)
                compared += 1
    assert compared >= 20


# torchtitan --------------------------------------------------------------------------------------------------


def titan_config(words: list[str], config: str):
    from torchtitan.config import ConfigManager

    return ConfigManager().parse_args(["--module", "llama3", "--config", config, *words])


def test_torchtitan_loads_the_exported_options_to_the_plans_degrees_and_stages(tmp_path):
    pytest.importorskip("torchtitan.config", reason="torchtitan not installed (pip install -e '.[interop]')")
    from torch.distributed.pipelining import schedules as torch_schedules

    six = dict(load_model("tiny").to_dict(), name="tiny-6", num_layers=6)  # llama3_debugmodel's 6 layers
    cases = [(pipeplan.optimize(six, CPU, global_batch=16, pp=2, schedules=[name]).plan, "llama3_debugmodel")
             for name in ("zb-v", "interleaved", "dualpipe-v", "zb-h1")]
    cases.append((Plan(model="llama3-8b", cluster="dgx-h100", schedule="1f1b", pp=2, tp=2, dp=2, sequence_parallel=True,
                       distributed_optimizer=True, num_microbatches=16, microbatch_size=1,
                       layers_per_stage=(17, 17)), "llama3_8b"))
    for mode in ("full", "none"):  # llama3_8b's own default is selective; the exported policy must win
        cases.append((Plan(model="llama3-8b", cluster="dgx-h100", schedule="1f1b", pp=2, num_microbatches=8,
                           microbatch_size=1, layers_per_stage=(17, 17), recompute=(mode, mode)), "llama3_8b"))
    for k, (plan, config_name) in enumerate(cases):
        r = resolved(plan)
        csv_path = str(tmp_path / f"{k}.csv")
        export = export_plan(r, "torchtitan", ExportOptions(schedule_csv=csv_path))
        cfg = titan_config(shell_words(export.text), config_name)
        par, training = cfg.parallelism, cfg.training
        assert (par.pipeline_parallel_degree, par.tensor_parallel_degree) == (plan.pp, plan.tp)
        assert par.data_parallel_shard_degree * par.data_parallel_replicate_degree == plan.dp
        assert training.local_batch_size // par.pipeline_parallel_microbatch_size == plan.num_microbatches
        assert training.global_batch_size == training.local_batch_size * plan.dp
        assert plan.tp == 1 or par.enable_sequence_parallel == plan.sequence_parallel
        policy = {"none", *plan.recompute} - {"none"} or {"none"}
        assert type(cfg.activation_checkpoint).__qualname__ == {"full": "FullAC.Config", "selective": "SelectiveAC.Config",
                                                                  "none": "NoneType"}[policy.pop()]
        parts = par.module_fqns_per_model_part
        layers = len(cfg.model_spec.model.layers)
        assert [n for part in parts for n in part] == (["tok_embeddings"] + [f"layers.{i}" for i in range(layers)]
                                                       + ["norm", "lm_head"])
        for s in range(plan.num_stages):
            assert [int(n.split(".")[1]) for n in parts[s] if n.startswith("layers.")] == blocks_of(plan, r.model, s)
        # torchtitan places the parts by the schedule's class (its pipeline_llm): V-shaped for torch's
        # ScheduleZBVZeroBubble and ScheduleDualPipeV (rank r: stages r and 2p-1-r), else looped (r, r+p, ...)
        v_shaped = issubclass(torch_schedules.get_schedule_class(par.pipeline_parallel_schedule),
                              (torch_schedules.ScheduleZBVZeroBubble, torch_schedules.ScheduleDualPipeV))
        for rank in range(plan.pp):
            placed = [s for s in range(len(parts))
                      if (min(s, 2 * plan.pp - 1 - s) if v_shaped else s % plan.pp) == rank]
            assert placed == r.schedule.stages_of(rank)
        if export.schedule_csv is None:
            assert par.pipeline_parallel_schedule_csv == ""
            assert torch_schedules.get_schedule_class(par.pipeline_parallel_schedule).__name__ \
                == "Schedule" + par.pipeline_parallel_schedule
        else:
            assert plan.schedule in ("zb-v", "zb-h1") and par.pipeline_parallel_schedule_csv == csv_path
            with open(csv_path, "w") as handle:
                handle.write(export.schedule_csv)
            runtime = torch_runtime(r.schedule, csv_path)
            assert [runtime.stage_index_to_group_rank[s] for s in range(plan.num_stages)] == \
                list(r.schedule.stage_to_device)


# torch.distributed.pipelining ----------------------------------------------------------------------------------


def torch_runtime(schedule, path: str, format: str = "compute_only"):
    """torch's ``_PipelineScheduleRuntime`` for rank 0's stages (stand-ins: the loader needs only their indices
    and counts) with the CSV at ``path`` loaded: its ``_load_csv`` runs ``_validate_schedule`` and, for a
    compute-only CSV, torch's own lowering to sends, receives and REDUCE_GRAD."""
    from torch.distributed.pipelining import schedules as torch_schedules

    stages = [types.SimpleNamespace(num_stages=schedule.num_stages, group_size=schedule.num_devices, group_rank=0,
                                    stage_index=s, is_first=s == 0, is_last=s == schedule.num_stages - 1, submod=None)
              for s in schedule.stages_of(0)]
    runtime = torch_schedules._PipelineScheduleRuntime(stages, schedule.num_microbatches)
    runtime._load_csv(path, format=format)
    return runtime


def test_torch_loads_and_validates_the_exported_csv(tmp_path):
    torch_schedules = pytest.importorskip("torch.distributed.pipelining.schedules", reason="torch not installed")
    plans = {name: pipeplan.optimize("tiny", CPU, global_batch=16, pp=2, schedules=[name]).plan
             for name in ("1f1b", "interleaved", "zb-h1", "zb-v", "dualpipe-v")}
    for name, plan in plans.items():
        assert plan.schedule == name
        r = resolved(plan)
        S, m = plan.num_stages, plan.num_microbatches
        path = tmp_path / f"{name}.csv"
        path.write_text(export_plan(r, "torch-csv").text)
        runtime = torch_runtime(r.schedule, str(path))
        assert [runtime.stage_index_to_group_rank[s] for s in range(S)] == list(r.schedule.stage_to_device)
        mapping = torch_schedules._validate_schedule(runtime.pipeline_order, plan.pp, S, m)
        assert mapping == runtime.stage_index_to_group_rank
        # compute_comms: torch's own lowering passes, _add_reduce_grad then _add_send_recv, on the compute-only order
        # (not its FSDP pass _add_unshard_reshard: pipeplan plans gather no parameters before use).
        compute = {rank: torch_schedules._add_reduce_grad(list(runtime.pipeline_order[rank]), m)
                   for rank in range(plan.pp)}
        theirs = torch_schedules._add_send_recv(compute, lambda s: r.schedule.stage_to_device[s], S)
        comms = export_plan(r, "torch-csv", ExportOptions(csv_format="compute_comms")).text
        assert [row.split(",") for row in comms.splitlines()] == [[repr(a) for a in theirs[rank]]
                                                                  for rank in range(plan.pp)]
        (tmp_path / f"{name}-comms.csv").write_text(comms)
        loaded = torch_runtime(r.schedule, str(tmp_path / f"{name}-comms.csv"), format="compute_comms")
        if name == "dualpipe-v":
            continue  # torch's dry run has no rule for OVERLAP_F_B (its container action has stage -1)
        p2p = {rank: [a for a in actions if a.computation_type != torch_schedules.REDUCE_GRAD]
               for rank, actions in loaded.pipeline_order_with_comms.items()}
        steps = torch_schedules._simulate_comms_compute(p2p, lambda s: r.schedule.stage_to_device[s], S)
        assert sum(a is not None for row in steps.values() for a in row) == sum(len(row) for row in p2p.values())
