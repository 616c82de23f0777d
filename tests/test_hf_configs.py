"""Models read from Hugging Face config.json files.

tests/data/hf/*/config.json are the published configs of these models (values as on the Hugging Face
Hub). The parameter counts below are what ``transformers`` builds from them:
``sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())`` on the meta device
(tied weights once), transformers 5.17.0. ``test_transformers_builds_the_counts_of_the_table``
re-derives them wherever transformers is installed; the table lets CI without it check the numbers.
"""
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pipeplan.costs import stage_work
from pipeplan.errors import SpecError
from pipeplan.hf_config import read_hf_config
from pipeplan.model import MODEL_PRESETS, load_model
from pipeplan.scaling import scale_model

REPO = Path(__file__).resolve().parents[1]
HF = REPO / "tests" / "data" / "hf"

TRANSFORMERS_PARAMS = {
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
    "llama-3.1-8b": 8_030_261_248,  # rope_scaling and 131072 positions change no shape
    "mistral-7b": 7_241_732_096,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-8b": 8_190_735_360,
    "qwen3-0.6b": 596_049_920,
    "gemma-7b": 8_537_680_896,
    "gemma-2-9b": 9_241_705_984,
    "gpt2": 124_439_808,
    "gpt-neox-20b": 20_554_567_680,
    "pythia-160m": 162_322_944,
    "opt-1.3b": 1_315_758_080,
    "opt-350m": 331_196_416,
    "phi-3-mini": 3_821_079_552,
}


def pipeplan(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def config(name: str) -> dict:
    return json.loads((HF / name / "config.json").read_text())


def test_every_shipped_dense_config_is_in_the_table():
    shipped = {d.name for d in HF.iterdir() if d.is_dir()}
    assert shipped - set(TRANSFORMERS_PARAMS) == {"mixtral-8x7b"}


@pytest.mark.parametrize("name", sorted(TRANSFORMERS_PARAMS))
def test_parameter_count_equals_transformers(name):
    assert load_model(str(HF / name)).total_params() == TRANSFORMERS_PARAMS[name]


def test_llama_3_8b_has_8_030_261_248_parameters():
    assert load_model(str(HF / "llama-3-8b" / "config.json")).total_params() == 8_030_261_248


def test_llama_3_8b_config_reads_as_the_preset_from_the_llama_3_paper():
    # The preset was typed in from the paper's table (32 layers, 4096 wide, 8 KV heads, FFN 14336).
    assert replace(load_model(str(HF / "llama-3-8b")), name="llama3-8b") == MODEL_PRESETS["llama3-8b"]


def _named_counts(model) -> tuple[int, int]:
    """(block 1's parameters, the parameters outside every block), from transformers' names."""
    block = outside = 0
    for name, p in model.named_parameters():  # a tied weight is listed once
        if re.search(r"\.(layers|h)\.1\.", name):
            block += p.numel()
        elif not re.search(r"\.(layers|h)\.\d+\.", name):
            outside += p.numel()
    return block, outside


@pytest.mark.parametrize("name", sorted(TRANSFORMERS_PARAMS))
def test_transformers_builds_the_counts_of_the_table(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder needs no network; never reach for one
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.from_pretrained(str(HF / name))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert total == TRANSFORMERS_PARAMS[name]
    spec = load_model(str(HF / name))
    block, outside = _named_counts(model)
    assert spec.layer_cost(1, 1).params == block
    head = spec.num_pipeline_layers - 1
    assert spec.layer_cost(0, 1).params + spec.layer_cost(head, 1).params - spec.tied_params == outside


@pytest.mark.parametrize("name,attribute,published", [
    ("qwen3-0.6b", "q_dim", 16 * 128),  # 16 heads of head_dim 128: wider than hidden (1024)
    ("gemma-7b", "head_size", 256),  # not 3072 / 16
    ("gemma-2-9b", "block_norms", 4),  # pre- and post-norms around attention and MLP
    ("gpt2", "ffn_hidden", 4 * 768),  # n_inner null
    ("gpt2", "dropout", True),  # resid/embd/attn_pdrop 0.1
    ("gpt2", "tied_embeddings", True),  # transformers' default for GPT-2
    ("opt-350m", "position_rows", 2048 + 2),  # OPT's offset of 2
    ("opt-350m", "embed_dim", 512),  # word_embed_proj_dim
    ("opt-350m", "final_norm", False),  # do_layer_norm_before false
    ("opt-1.3b", "final_norm", True),
    ("phi-3-mini", "kv_heads", 32),
    ("qwen2.5-7b", "qkv_bias", True),
    ("qwen2.5-7b", "out_bias", False),
    ("gpt-neox-20b", "tied_embeddings", False),
    ("llama-3.1-8b", "seq_len", 131072),  # max_position_embeddings: the default sequence length
    ("gpt2", "seq_len", 1024),  # n_positions
])
def test_fields_read_from_the_published_configs(name, attribute, published):
    assert getattr(load_model(str(HF / name)), attribute) == published


def test_head_dim_sets_the_attention_flops_and_shapes():
    # Qwen3-0.6B's block from transformers' shapes: q (2048 x 1024), k and v (1024 x 1024),
    # o (1024 x 2048), gate and up (3072 x 1024), down (1024 x 3072).
    matrices = 2048 * 1024 + 2 * 1024 * 1024 + 1024 * 2048 + 3 * 3072 * 1024
    assert matrices == 15_728_640
    s = 1024
    cost = load_model(str(HF / "qwen3-0.6b")).layer_cost(1, 1, s)
    assert cost.forward_flops == 2 * s * matrices + 4 * s * s * 16 * 128
    assert cost.attention_gemms[0] == (s, s, 128, 16)  # QK^T per head: head_dim 128


def test_a_tied_embedding_is_held_once_per_stage_holding_it():
    gpt2 = load_model(str(HF / "gpt2"))
    layers = gpt2.num_pipeline_layers
    whole = stage_work(gpt2, range(layers), 1, 1024, False).params
    assert whole == 124_439_808  # one stage: the matrix once, as transformers counts it
    halves = [stage_work(gpt2, r, 1, 1024, False).params for r in (range(7), range(7, layers))]
    assert sum(halves) == 124_439_808 + 50257 * 768  # two stages: the head's stage holds a copy


def test_scaled_models_keep_their_own_head_size_and_position_offset():
    qwen = scale_model(load_model(str(HF / "qwen3-0.6b")), 0.25)
    assert qwen.head_size == 32 and qwen.q_dim == 16 * 32
    opt = scale_model(load_model(str(HF / "opt-350m")), 0.25)
    assert opt.position_rows == opt.seq_len + 2 and opt.embed_dim == 128


def test_an_inline_config_is_named_by_its_name_or_path():
    assert load_model(config("opt-1.3b")).name == "facebook/opt-1.3b"
    assert load_model(config("opt-1.3b")).total_params() == 1_315_758_080


def test_mixtral_is_refused_as_a_mixture_of_experts():
    with pytest.raises(SpecError) as err:
        load_model(str(HF / "mixtral-8x7b"))
    assert str(err.value) == ("model.architectures: MixtralForCausalLM is a mixture-of-experts model; "
                              "pipeplan models dense decoder-only transformers")


@pytest.mark.parametrize("cfg", [
    {"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "n_routed_experts": 256},
    {"model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"], "num_experts": 60},
    {"model_type": "olmoe", "architectures": ["OlmoeForCausalLM"]},
])
def test_other_mixtures_of_experts_are_refused(cfg):
    with pytest.raises(SpecError, match=r"^model\.architectures: \w+ is a mixture-of-experts model"):
        read_hf_config(cfg)


@pytest.mark.parametrize("change,message", [
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"]},
     r"^model\.model_type: 'bert' \(BertForMaskedLM\) is not a family pipeplan reads; it reads .*llama"),
    ({"model_type": None}, r"^model\.model_type: missing"),
    ({"hidden_size": None}, r"^model\.hidden_size: missing from the Hugging Face config"),
    ({"num_key_value_heads": 3}, r"^model\.num_key_value_heads: 3 must divide num_attention_heads \(32\)"),
    ({"num_hidden_layers": "32"}, r"^model\.num_hidden_layers: must be a positive integer"),
    ({"tie_word_embeddings": "false"}, r"^model\.tie_word_embeddings: must be true or false"),
    ({"attention_dropout": 2}, r"^model\.attention_dropout: must be a probability in \[0, 1\)"),
])
def test_bad_configs_name_the_field(change, message):
    cfg = config("llama-3-8b")
    for key, value in change.items():
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
    with pytest.raises(SpecError, match=message):
        read_hf_config(cfg, "x")


def test_a_folder_without_config_json_is_one_clear_error(tmp_path):
    with pytest.raises(SpecError, match="holds no config.json"):
        load_model(str(tmp_path))


def test_simulate_runs_llama_3_8b_from_its_config():
    out = pipeplan("simulate", "--model", "tests/data/hf/llama-3-8b", "--cluster", "dgx-h100", "--pp", "8",
                   "-m", "16", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["model"] == "llama-3-8b" and sum(data["layers_per_stage"]) == 32 + 2
    # bf16 weights, 2 bytes per parameter, untied: the 8 stages hold transformers' count exactly.
    assert sum(d["weights"] for d in data["memory_breakdown"]) == 2 * 8_030_261_248
    human = pipeplan("simulate", "--model", "tests/data/hf/llama-3-8b", "--cluster", "dgx-h100", "--pp", "8",
                     "-m", "16")
    assert human.returncode == 0 and "llama-3-8b on dgx-h100" in human.stdout


def test_simulate_refuses_mixtral_in_one_line_exit_2():
    out = pipeplan("simulate", "--model", "tests/data/hf/mixtral-8x7b", "--cluster", "dgx-h100", "--pp", "8",
                   "-m", "16")
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr == ("pipeplan simulate: error: model.architectures: MixtralForCausalLM is a "
                          "mixture-of-experts model; pipeplan models dense decoder-only transformers\n")


def test_a_plan_names_a_config_folder_beside_it(tmp_path):
    shutil.copytree(HF / "gemma-2-9b", tmp_path / "gemma-2-9b")
    plan = {"model": "gemma-2-9b", "cluster": "dgx-h100", "schedule": "1f1b", "pp": 4, "num_microbatches": 8,
            "microbatch_size": 1, "layers_per_stage": [11, 11, 11, 11]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = pipeplan("simulate", "plan.json", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["model"] == "gemma-2-9b"
    # tied: the first and the last stage each hold the 256000 x 3584 embedding
    assert sum(d["weights"] for d in data["memory_breakdown"]) == 2 * (9_241_705_984 + 256000 * 3584)
