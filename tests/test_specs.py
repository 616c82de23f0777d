"""Model, cluster and plan specs against published numbers, and their error messages."""
import json

import pytest

from pipeplan import MODEL_PRESETS, Plan, SpecError, even_split, load_cluster, load_model, simulate
from pipeplan import lower
from pipeplan.costs import bytes_per_param
from plans import llama_plan  # tests/ is on sys.path


@pytest.mark.parametrize("name,published", [
    ("llama3-8b", 8.03e9), ("llama3-70b", 70.6e9), ("llama3-405b", 405.9e9), ("gpt3-175b", 175.0e9),
])
def test_preset_parameter_counts_match_the_model_cards(name, published):
    assert load_model(name).total_params() == pytest.approx(published, rel=0.01)


def test_gpt_block_matches_narayanan_flops_and_korthikanti_activations():
    m = MODEL_PRESETS["gpt3-175b"]
    b, s, h = 2, m.seq_len, m.hidden
    block = m.layer_cost(1, b, s)
    # Narayanan et al. SC'21: 24·b·s·h² + 4·b·s²·h forward FLOPs per block; backward twice that.
    assert block.forward_flops == pytest.approx(24 * b * s * h * h + 4 * b * s * s * h)
    assert block.input_grad_flops + block.weight_grad_flops == pytest.approx(2 * block.forward_flops)
    # Korthikanti et al. 2022: 34·s·b·h bytes (the 5·a·s/h score term is gone with FlashAttention).
    assert block.activation_bytes == pytest.approx(34 * s * b * h)
    assert block.recompute_bytes == pytest.approx(2 * s * b * h)


def test_lm_head_flops_and_boundary_bytes():
    m = MODEL_PRESETS["llama3-8b"]
    head = m.layer_cost(m.num_pipeline_layers - 1, 1, 8192)
    assert head.forward_flops == pytest.approx(2 * 8192 * 4096 * 128256)
    block = m.layer_cost(1, 1, 8192)
    assert block.boundary_bytes == 2 * 8192 * 4096  # b·s·h bf16 elements


def test_megatron_bytes_per_parameter():
    assert bytes_per_param(1, False) == 18
    assert bytes_per_param(4, True) == 6 + 12 / 4


def test_plan_json_round_trip():
    plan = llama_plan(recompute=("full",) + ("none",) * 7, seq_len=4096)
    back = Plan.from_dict(json.loads(plan.to_json()))
    assert back.to_dict() == plan.to_dict()
    assert (back.layers_per_stage, back.recompute, back.gpus()) == (plan.layers_per_stage, plan.recompute, plan.gpus())
    assert back.cut_points == (5, 10, 14, 18, 22, 26, 30)


@pytest.mark.parametrize("changes,field", [
    (dict(pp=0), "plan.pp"),
    (dict(schedule="bogus"), "plan.schedule"),
    (dict(recompute=("some",) * 8), "plan.recompute"),
    (dict(layers_per_stage=(0, 34)), "plan.layers_per_stage"),
    (dict(format_version=9), "plan.format_version"),
])
def test_bad_plan_fields_are_named(changes, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        llama_plan(**changes)


def test_plan_layer_count_must_match_model():
    with pytest.raises(SpecError, match=r"plan\.layers_per_stage: sums to 33 but llama3-8b has 34"):
        lower("llama3-8b", "dgx-h100", llama_plan(layers_per_stage=(4,) * 7 + (5,)))


def test_placement_must_fit_the_cluster():
    with pytest.raises(SpecError, match="raise --nodes"):
        simulate(plan=llama_plan(pp=16, layers_per_stage=even_split(34, 16), num_microbatches=16))


def test_two_node_pipeline_crosses_infiniband_once():
    plan = llama_plan(pp=16, layers_per_stage=even_split(34, 16), nodes=2)
    workload, _ = lower(plan.model, plan.cluster, plan)
    ib = [(a, b) for a in range(16) for b in range(16) if workload.network.link(a, b).bandwidth == 50e9]
    assert (7, 8) in ib and (8, 7) in ib and (6, 7) not in ib


def test_model_and_cluster_files(tmp_path):
    model_file = tmp_path / "m.yaml"
    model_file.write_text("name: mini\nnum_layers: 4\nhidden: 256\nheads: 4\nffn_hidden: 1024\nvocab: 1000\nseq_len: 128\n")
    assert load_model(str(model_file)).num_pipeline_layers == 6
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "num_layers": 4, "hidden": 256, "heads": 3, "ffn_hidden": 1,
                               "vocab": 10, "seq_len": 8}))
    with pytest.raises(SpecError, match=r"model\.heads: 3 must divide hidden"):
        load_model(str(bad))
    with pytest.raises(SpecError, match="unknown preset 'nope'"):
        load_cluster("nope")


def test_simulated_preset_plan_fits_and_reports_throughput():
    result = simulate(plan=llama_plan())
    assert result.fits
    # Tokens per second is the batch's tokens over the iteration time.
    assert result.tokens_per_second == pytest.approx(16 * 8192 / result.iteration_time)
    assert 0.0 < result.mfu < 0.6


@pytest.mark.parametrize("field,value", [("gated_mlp", "false"), ("dropout", "no"), ("learned_positions", 1),
                                         ("name", [1])])
def test_model_field_of_the_wrong_type_is_refused(field, value):
    from pipeplan.errors import SpecError
    from pipeplan.model import ModelSpec

    data = {"name": "m", "num_layers": 4, "hidden": 64, "heads": 4, "ffn_hidden": 256, "vocab": 512, "seq_len": 64,
            field: value}
    with pytest.raises(SpecError, match=f"model.{field}"):
        ModelSpec.from_dict(data)
