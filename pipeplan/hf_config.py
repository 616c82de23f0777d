"""Models from Hugging Face ``config.json`` files: the dense decoder-only families of ``transformers``.

``read_hf_config(config, name)`` is the ``ModelSpec`` of the model ``transformers`` builds from
``config`` (``AutoModelForCausalLM.from_config``): the same shapes, biases, norms and tied
embeddings, so that ``ModelSpec.total_params()`` equals the sum of ``p.numel()`` over that model's
``parameters()``. ``HF_FAMILIES`` holds one reader per ``model_type``. A key the config leaves out
takes the default of that family's ``transformers`` config class; the shape keys (hidden size,
layers, heads, FFN width, vocabulary) must be there. ``max_position_embeddings`` (GPT-2:
``n_positions``) becomes ``seq_len``, the sequence length a plan uses unless it sets its own
(``--seq-len``).

What does not change a parameter count is read no further: rotary variants and ``rope_scaling``,
sliding windows, logit soft-capping, GPT-NeoX's parallel residual, activation functions (GeGLU and
SwiGLU have the same three matrices), Phi-3's fused QKV and gate/up matrices (the same parameters
as separate ones). Mixture-of-experts configs and other families are refused with one line that
names the field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import SpecError, positive_int
from .model import ModelSpec

Config = dict[str, Any]
_REQUIRED = object()
# Keys that give a layer's experts (Mixtral, Qwen-MoE, DeepSeek, OLMoE, DBRX ...).
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")


def _get(cfg: Config, key: str, default: Any = _REQUIRED) -> Any:
    """``cfg[key]``, or ``default`` when the config leaves it out (as ``transformers`` fills it in)."""
    if key in cfg:
        return cfg[key]
    if default is _REQUIRED:
        raise SpecError(f"model.{key}: missing from the Hugging Face config; add it as the model's "
                        "published config.json has it")
    return default


def _int(cfg: Config, key: str, default: Any = _REQUIRED) -> int:
    return positive_int(f"model.{key}", _get(cfg, key, default))


def _flag(cfg: Config, key: str, default: bool) -> bool:
    value = _get(cfg, key, default)
    if not isinstance(value, bool):
        raise SpecError(f"model.{key}: must be true or false (got {value!r})")
    return value


def _dropout(cfg: Config, defaults: dict[str, float]) -> bool:
    """Whether training drops anything out: any of the family's dropout probabilities (null: 0) above 0."""
    probabilities = {key: _get(cfg, key, default) or 0 for key, default in defaults.items()}
    for key, value in probabilities.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise SpecError(f"model.{key}: must be a probability in [0, 1) (got {value!r})")
    return any(value > 0 for value in probabilities.values())


def _heads(cfg: Config, hidden: int, kv_default: int | None, head_dim_default: int | None) -> dict[str, Any]:
    """Query heads, key/value heads and head size; a null ``num_key_value_heads`` or ``head_dim`` means
    as many as the query heads and hidden / heads, as ``transformers`` reads them. A head size of
    hidden / heads is left implicit (None), as in the presets."""
    heads = _int(cfg, "num_attention_heads")
    kv = _get(cfg, "num_key_value_heads", kv_default)
    kv = heads if kv is None else positive_int("model.num_key_value_heads", kv)
    if heads % kv:
        raise SpecError(f"model.num_key_value_heads: {kv} must divide num_attention_heads ({heads})")
    head_dim = _get(cfg, "head_dim", head_dim_default)
    if head_dim is None:
        if hidden % heads:
            raise SpecError(f"model.num_attention_heads: {heads} must divide hidden_size ({hidden}), or give head_dim")
        head_dim = hidden // heads
    positive_int("model.head_dim", head_dim)
    return dict(heads=heads, kv_heads=kv, head_dim=None if head_dim * heads == hidden else head_dim)


def _rotary_decoder(cfg: Config, *, kv_default: int | None, head_dim_default: int | None, tied_default: bool,
                    max_positions_default: int, qkv_bias: bool, out_bias: bool, mlp_bias: bool = False,
                    block_norms: int = 2, qk_norm: bool = False) -> dict[str, Any]:
    """Llama's layout, which Mistral, Qwen, Gemma and Phi-3 share: rotary positions, RMSNorm before
    attention and before a gated MLP, a final norm, an LM head without bias."""
    hidden = _int(cfg, "hidden_size")
    return dict(
        num_layers=_int(cfg, "num_hidden_layers"), hidden=hidden, ffn_hidden=_int(cfg, "intermediate_size"),
        vocab=_int(cfg, "vocab_size"), seq_len=_int(cfg, "max_position_embeddings", max_positions_default),
        **_heads(cfg, hidden, kv_default, head_dim_default), gated_mlp=True,
        tied_embeddings=_flag(cfg, "tie_word_embeddings", tied_default), qkv_bias=qkv_bias, out_bias=out_bias,
        mlp_bias=mlp_bias, norm="rmsnorm", block_norms=block_norms, qk_norm=qk_norm,
        dropout=_dropout(cfg, {"attention_dropout": 0.0}),
    )


def _llama(cfg: Config) -> dict[str, Any]:
    bias = _flag(cfg, "attention_bias", False)
    return _rotary_decoder(cfg, kv_default=None, head_dim_default=None, tied_default=False, max_positions_default=2048,
                           qkv_bias=bias, out_bias=bias, mlp_bias=_flag(cfg, "mlp_bias", False))


def _mistral(cfg: Config) -> dict[str, Any]:
    return _rotary_decoder(cfg, kv_default=8, head_dim_default=None, tied_default=False,
                           max_positions_default=4096 * 32, qkv_bias=False, out_bias=False)


def _qwen2(cfg: Config) -> dict[str, Any]:
    return _rotary_decoder(cfg, kv_default=32, head_dim_default=None, tied_default=False, max_positions_default=32768,
                           qkv_bias=True, out_bias=False)


def _qwen3(cfg: Config) -> dict[str, Any]:
    bias = _flag(cfg, "attention_bias", False)
    return _rotary_decoder(cfg, kv_default=32, head_dim_default=128, tied_default=False, max_positions_default=32768,
                           qkv_bias=bias, out_bias=bias, qk_norm=True)


def _gemma(cfg: Config) -> dict[str, Any]:
    bias = _flag(cfg, "attention_bias", False)
    return _rotary_decoder(cfg, kv_default=16, head_dim_default=256, tied_default=True, max_positions_default=8192,
                           qkv_bias=bias, out_bias=bias)


def _gemma2(cfg: Config) -> dict[str, Any]:
    """Gemma 2 norms each sub-layer's input and output: four norms per block."""
    bias = _flag(cfg, "attention_bias", False)
    return _rotary_decoder(cfg, kv_default=4, head_dim_default=256, tied_default=True, max_positions_default=8192,
                           qkv_bias=bias, out_bias=bias, block_norms=4)


def _phi3(cfg: Config) -> dict[str, Any]:
    spec = _rotary_decoder(cfg, kv_default=None, head_dim_default=None, tied_default=False,
                           max_positions_default=4096, qkv_bias=False, out_bias=False)
    return {**spec, "dropout": _dropout(cfg, {"attention_dropout": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0})}


def _gpt2(cfg: Config) -> dict[str, Any]:
    """GPT-2: learned positions, LayerNorm, biases on every matrix (Conv1D), tied embeddings; an MLP
    of ``n_inner`` (null: 4 x hidden)."""
    if _flag(cfg, "add_cross_attention", False):
        raise SpecError("model.add_cross_attention: cross-attention makes GPT-2 an encoder-decoder's decoder; "
                        "pipeplan models decoder-only transformers (set it to false)")
    hidden, heads = _int(cfg, "n_embd"), _int(cfg, "n_head")
    if hidden % heads:
        raise SpecError(f"model.n_head: {heads} must divide n_embd ({hidden})")
    inner = _get(cfg, "n_inner", None)
    positions = _int(cfg, "n_positions", 1024)
    return dict(
        num_layers=_int(cfg, "n_layer"), hidden=hidden, heads=heads,
        ffn_hidden=4 * hidden if inner is None else positive_int("model.n_inner", inner),
        vocab=_int(cfg, "vocab_size"), seq_len=positions, learned_positions=True, position_rows=positions,
        tied_embeddings=_flag(cfg, "tie_word_embeddings", True), qkv_bias=True, out_bias=True, mlp_bias=True,
        norm="layernorm", dropout=_dropout(cfg, {"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}),
    )


def _gpt_neox(cfg: Config) -> dict[str, Any]:
    """GPT-NeoX and Pythia: rotary positions, LayerNorm, biased MLP, attention biases unless
    ``attention_bias`` is false, untied embeddings."""
    hidden, heads = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads")
    if hidden % heads:
        raise SpecError(f"model.num_attention_heads: {heads} must divide hidden_size ({hidden})")
    bias = _flag(cfg, "attention_bias", True)
    return dict(
        num_layers=_int(cfg, "num_hidden_layers"), hidden=hidden, heads=heads,
        ffn_hidden=_int(cfg, "intermediate_size"), vocab=_int(cfg, "vocab_size"),
        seq_len=_int(cfg, "max_position_embeddings", 2048), tied_embeddings=_flag(cfg, "tie_word_embeddings", False),
        qkv_bias=bias, out_bias=bias, mlp_bias=True, norm="layernorm",
        dropout=_dropout(cfg, {"attention_dropout": 0.0, "hidden_dropout": 0.0}),
    )


def _opt(cfg: Config) -> dict[str, Any]:
    """OPT: learned positions with 2 extra rows (its padding offset), LayerNorm, biases unless
    ``enable_bias`` is false, tied embeddings of width ``word_embed_proj_dim`` projected to and from
    hidden when it differs, and no final norm when the blocks norm after each sub-layer
    (``do_layer_norm_before`` false, OPT-350m)."""
    if not _flag(cfg, "layer_norm_elementwise_affine", True):
        raise SpecError("model.layer_norm_elementwise_affine: norms without weights are not modelled; "
                        "pipeplan reads OPT configs with it true (the default)")
    hidden, heads = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads")
    if hidden % heads:
        raise SpecError(f"model.num_attention_heads: {heads} must divide hidden_size ({hidden})")
    positions = _int(cfg, "max_position_embeddings", 2048)
    bias = _flag(cfg, "enable_bias", True)
    final_norm = _flag(cfg, "do_layer_norm_before", True) and not _flag(cfg, "_remove_final_layer_norm", False)
    return dict(
        num_layers=_int(cfg, "num_hidden_layers"), hidden=hidden, heads=heads, ffn_hidden=_int(cfg, "ffn_dim"),
        vocab=_int(cfg, "vocab_size"), seq_len=positions, learned_positions=True, position_rows=positions + 2,
        embed_dim=_int(cfg, "word_embed_proj_dim", hidden), tied_embeddings=_flag(cfg, "tie_word_embeddings", True),
        qkv_bias=bias, out_bias=bias, mlp_bias=bias, norm="layernorm", final_norm=final_norm,
        dropout=_dropout(cfg, {"dropout": 0.1, "attention_dropout": 0.0}),
    )


HF_FAMILIES: dict[str, Callable[[Config], dict[str, Any]]] = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "phi3": _phi3,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "opt": _opt,
}


def is_hf_config(data: dict) -> bool:
    """Whether a mapping is a Hugging Face config (pipeplan's own model files have neither key)."""
    return "model_type" in data or "architectures" in data


def _architecture(cfg: Config) -> str:
    archs = cfg.get("architectures")
    return archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else str(cfg.get("model_type"))


def read_hf_config(cfg: Config, name: str | None = None) -> ModelSpec:
    """The ``ModelSpec`` of the model ``transformers`` builds from ``cfg``, named ``name`` (None: the
    config's ``_name_or_path``, else its ``model_type``)."""
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise SpecError("model.model_type: missing from the Hugging Face config; it names the family "
                        f"({', '.join(HF_FAMILIES)})")
    reader = HF_FAMILIES.get(model_type)
    if reader is None:
        if "moe" in model_type or any(isinstance(cfg.get(k), int) and cfg[k] > 0 for k in MOE_KEYS):
            raise SpecError(f"model.architectures: {_architecture(cfg)} is a mixture-of-experts model; "
                            "pipeplan models dense decoder-only transformers")
        raise SpecError(f"model.model_type: {model_type!r} ({_architecture(cfg)}) is not a family pipeplan reads; "
                        f"it reads the dense decoder-only {', '.join(HF_FAMILIES)}")
    return ModelSpec(name=name or str(cfg.get("_name_or_path") or model_type), **reader(cfg))


def config_file(path: Path) -> Path:
    """``path``, or the ``config.json`` in it when ``path`` is a Hugging Face model folder."""
    if not path.is_dir():
        return path
    if not (path / "config.json").is_file():
        raise SpecError(f"model: folder {str(path)!r} holds no config.json; give a preset name, a JSON/YAML "
                        "file or a Hugging Face model folder")
    return path / "config.json"


def model_name(config_path: Path) -> str:
    """A model's name from its config file: the folder of a ``config.json``, else the file's stem."""
    return config_path.resolve().parent.name if config_path.name == "config.json" else config_path.stem
