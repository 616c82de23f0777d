"""Model specs: a model is a list of layers (embedding, transformer blocks, final norm + LM head).

``ModelSpec`` holds a decoder-only transformer's hyper-parameters; ``ModelSpec.layer_cost`` is what
one layer costs for one micro-batch on one tensor-parallel rank (``LayerCost``), by the formulas of
``pipeplan.layer_costs``. ``MODEL_PRESETS`` are named models, ``load_model`` reads a preset, a spec
file or a Hugging Face config.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import SpecError, name_text, positive_int
from .fileio import load_mapping
from .megatron_kernels import FUSED, KERNEL_CHOICES, with_kernels

BYTES_BF16 = 2
EMBEDDING, BLOCK, HEAD = "embedding", "block", "head"
# The layer kinds full activation recomputation checkpoints: the transformer blocks only. Megatron-LM
# wraps its layers in ``_checkpointed_forward`` (``ParallelTransformer`` in megatron/model/transformer.py
# of 2021-22; ``TransformerBlock`` in megatron/core/transformer/transformer_block.py) and applies the
# final norm after it; the embedding, the output layer and the loss run outside. torchtitan's
# ``apply_ac`` wraps each ``TransformerBlock`` the same way.
RECOMPUTED_KINDS = (BLOCK,)
ATTENTION_CHOICES = ("flash", "standard")
# Parameters per channel of each norm kind: RMSNorm scales (a weight), LayerNorm scales and shifts.
NORM_PARAMS = {"rmsnorm": 1, "layernorm": 2}

# (m, n, k, batch): ``batch`` (m x k) @ (k x n) GEMMs run as one kernel.
Gemm = tuple[float, float, float, int]
# (kind, bytes): one collective over the tensor-parallel group, nbytes as ``collectives.ring_seconds`` takes it.
TPCollective = tuple[str, float]


@dataclass(frozen=True)
class LayerCost:
    """One layer for one micro-batch on one tensor-parallel rank.

    FLOPs are split the way the backward splits them. ``gemms`` are the forward GEMMs with weights
    (their dX runs in I, their dW in W), ``attention_gemms`` the attention core's (QK^T and AV; all of
    their backward runs in I). ``*_memory_bytes`` are what the memory-bound kernels read and write in
    each op; ``score_memory_bytes`` the forward's share of them spent on the s x s attention scores
    (what selective recomputation re-runs with the attention core). ``tp_forward``/``tp_backward`` are
    the tensor-parallel collectives on the critical path of F and of I.
    """

    forward_flops: float
    input_grad_flops: float  # I: dX for every matmul, and the whole attention-core backward
    weight_grad_flops: float  # W: dW for every matmul
    params: float
    activation_bytes: float  # stored by F for the backward, without recomputation
    weight_grad_bytes: float  # the part of it W still needs after I: the inputs of the matmuls
    recompute_bytes: float  # stored with full recomputation: a block its input only, other kinds as without
    boundary_bytes: float  # the tensor sent to the next stage (and its gradient back)
    selective_bytes: float = 0.0  # stored with selective recomputation: without the attention scores
    gemms: tuple[Gemm, ...] = ()
    attention_gemms: tuple[Gemm, ...] = ()
    forward_memory_bytes: float = 0.0
    input_grad_memory_bytes: float = 0.0
    weight_grad_memory_bytes: float = 0.0
    score_memory_bytes: float = 0.0
    score_backward_memory_bytes: float = 0.0  # the backward's share of input_grad_memory_bytes on the scores
    tp_forward: tuple[TPCollective, ...] = ()
    tp_backward: tuple[TPCollective, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, described by its hyper-parameters.

    ``gated_mlp`` selects SwiGLU (three h x ffn matrices, Llama) over GeLU (two, GPT);
    ``kv_heads`` < ``heads`` is grouped-query attention; ``dropout`` adds the 1-byte masks GPT keeps.
    ``attention`` is the attention kernel: ``"flash"`` (FlashAttention, Dao et al. 2022: the s x s
    scores never reach memory) or ``"standard"`` (softmax and dropout over stored scores, as
    Megatron-LM's fused softmax in 2021). ``kernels`` adds the memory-bound passes older Megatron-LM code
    made (``pipeplan.megatron_kernels``: "fused", the default, "megatron-2022" or "megatron-2021").

    The other fields make the parameter count what ``transformers`` builds (``pipeplan.hf_config``):
    ``head_dim`` (None: hidden / heads), ``tied_embeddings``, biases of Q/K/V (``qkv_bias``), of the
    attention output (``out_bias``) and of the MLP (``mlp_bias``), the ``norm`` kind (``NORM_PARAMS``),
    ``block_norms`` per block (Gemma 2: four), ``qk_norm`` (Qwen3's per-head norm of queries and
    keys), ``final_norm``, ``position_rows`` (learned positions; None: seq_len) and ``embed_dim``
    (OPT's token width, projected to hidden; None: hidden). Their defaults are the presets'.
    """

    name: str
    num_layers: int
    hidden: int
    heads: int
    ffn_hidden: int
    vocab: int
    seq_len: int
    kv_heads: int | None = None
    gated_mlp: bool = False
    dropout: bool = False
    learned_positions: bool = False
    attention: str = "flash"
    head_dim: int | None = None
    tied_embeddings: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    norm: str = "rmsnorm"
    block_norms: int = 2
    qk_norm: bool = False
    final_norm: bool = True
    position_rows: int | None = None
    embed_dim: int | None = None
    kernels: str = "fused"

    def __post_init__(self) -> None:
        name_text("model.name", self.name)
        for f in ("gated_mlp", "dropout", "learned_positions", "tied_embeddings", "qkv_bias", "out_bias",
                  "mlp_bias", "qk_norm", "final_norm"):
            if not isinstance(getattr(self, f), bool):  # "false" would be truthy
                raise SpecError(f"model.{f}: must be true or false (got {getattr(self, f)!r})")
        for f in ("num_layers", "hidden", "heads", "ffn_hidden", "vocab", "seq_len"):
            positive_int(f"model.{f}", getattr(self, f))
        for f in ("kv_heads", "head_dim", "position_rows", "embed_dim"):
            if getattr(self, f) is not None:
                positive_int(f"model.{f}", getattr(self, f))
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise SpecError(f"model.kv_heads: {self.kv_heads} must divide heads ({self.heads})")
        if self.head_dim is None and self.hidden % self.heads:
            raise SpecError(f"model.heads: {self.heads} must divide hidden ({self.hidden}), or give head_dim")
        if self.attention not in ATTENTION_CHOICES:
            raise SpecError(f"model.attention: {self.attention!r} is not one of {', '.join(ATTENTION_CHOICES)}")
        if self.kernels not in KERNEL_CHOICES:
            raise SpecError(f"model.kernels: {self.kernels!r} is not one of {', '.join(KERNEL_CHOICES)}")
        if self.norm not in NORM_PARAMS:
            raise SpecError(f"model.norm: {self.norm!r} is not one of {', '.join(NORM_PARAMS)}")
        if isinstance(self.block_norms, bool) or not isinstance(self.block_norms, int) or self.block_norms < 0:
            raise SpecError(f"model.block_norms: must be a whole number >= 0 (got {self.block_norms!r})")
        if self.learned_positions and self.position_rows is not None and self.position_rows < self.seq_len:
            raise SpecError(f"model.position_rows: {self.position_rows} learned positions cannot cover seq_len "
                            f"{self.seq_len}; give at least {self.seq_len}")

    @property
    def head_size(self) -> int:
        """Channels per attention head: ``head_dim``, else hidden / heads."""
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        """Width of the queries (and of the attention output): heads x head size."""
        return self.heads * self.head_size

    @property
    def kv_dim(self) -> int:
        return self.head_size * (self.kv_heads or self.heads)

    @property
    def embedding_width(self) -> int:
        return self.embed_dim or self.hidden

    @property
    def tied_params(self) -> int:
        """The LM head's copy of the token embedding when the two are tied (0 when untied)."""
        return self.vocab * self.embedding_width if self.tied_embeddings else 0

    def norm_params(self, width: int) -> int:
        return NORM_PARAMS[self.norm] * width

    @property
    def layer_kinds(self) -> list[str]:
        """Layer i of the pipeline: the embedding, the blocks, then the final norm + LM head.

        A new list of num_layers + 2 on every call: look one layer up with ``layer_kind``.
        """
        return [EMBEDDING] + [BLOCK] * self.num_layers + [HEAD]

    def layer_kind(self, index: int) -> str:
        """The kind of pipeline layer ``index`` (as ``layer_kinds[index]``, negative indices too), in O(1)."""
        n = self.num_layers + 2
        if not -n <= index < n:
            raise IndexError(f"layer {index} is not among {self.name}'s {n} pipeline layers")
        index %= n
        return EMBEDDING if index == 0 else HEAD if index == n - 1 else BLOCK

    @property
    def num_pipeline_layers(self) -> int:
        return self.num_layers + 2

    def total_params(self) -> float:
        """Every parameter once (a tied embedding once, as ``transformers`` counts ``model.parameters()``)."""
        layers = sum(self.layer_cost(i, 1, self.seq_len).params for i in range(self.num_pipeline_layers))
        return layers - self.tied_params

    def check_tp(self, tp: int) -> None:
        """Megatron splits heads (and KV groups) over the tensor-parallel ranks: t must divide them."""
        positive_int("plan.tp", tp)
        if self.heads % tp or (self.kv_heads or self.heads) % tp:
            raise SpecError(f"plan.tp: {tp} must divide {self.name}'s heads ({self.heads}) and kv_heads "
                            f"({self.kv_heads or self.heads})")

    def layer_cost(self, index: int, microbatch: int, seq_len: int | None = None, tp: int = 1,
                   sequence_parallel: bool = False, loss: bool = True) -> LayerCost:
        """Layer ``index`` for ``microbatch`` sequences of ``seq_len`` on one of ``tp`` tensor-parallel ranks;
        ``loss`` False: a serving pass, whose head gathers logits for sampling (``layer_costs.head_cost``)."""
        from .layer_costs import block_cost, embedding_cost, head_cost  # it imports this module

        s = seq_len or self.seq_len
        self.check_tp(tp)
        kind = self.layer_kind(index)
        if kind == HEAD:
            cost = head_cost(self, microbatch, s, tp, sequence_parallel, loss=loss)
        else:
            cost = (embedding_cost if kind == EMBEDDING else block_cost)(self, microbatch, s, tp, sequence_parallel)
        # Megatron's extra passes on the logits are its loss's: a serving head has none.
        kernels = self.kernels if loss or kind != HEAD else FUSED
        return with_kernels(kernels, kind, cost, microbatch * s, self.hidden, self.vocab, tp)

    @property
    def block_matrix_params(self) -> int:
        """The weight matrices of one block: Q, K, V, O and the MLP's two (three when gated)."""
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        return h * q + 2 * h * kv + q * h + (3 if self.gated_mlp else 2) * h * self.ffn_hidden

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "ModelSpec":
        known = {f.name for f in fields(ModelSpec)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"model.{unknown[0]}: unknown field; known fields are {', '.join(sorted(known))}")
        required = ("name", "num_layers", "hidden", "heads", "ffn_hidden", "vocab", "seq_len")
        missing = [f for f in required if f not in data]
        if missing:
            raise SpecError(f"model.{missing[0]}: required field is missing")
        return ModelSpec(**data)


MODEL_PRESETS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("gpt3-175b", 96, 12288, 96, 49152, 50257, 2048, dropout=True, learned_positions=True),
        ModelSpec("gpt2-xl", 48, 1600, 25, 6400, 50257, 1024, dropout=True, learned_positions=True),
        ModelSpec("llama3-8b", 32, 4096, 32, 14336, 128256, 8192, kv_heads=8, gated_mlp=True),
        ModelSpec("llama3-70b", 80, 8192, 64, 28672, 128256, 8192, kv_heads=8, gated_mlp=True),
        ModelSpec("llama3-405b", 126, 16384, 128, 53248, 128256, 8192, kv_heads=8, gated_mlp=True),
        ModelSpec("tiny", 8, 64, 4, 256, 512, 64),
    )
}


def load_model(name_or_path: str | dict | ModelSpec) -> ModelSpec:
    """A preset name, a JSON/YAML file of hyper-parameters, a Hugging Face ``config.json`` or the
    folder holding one (``pipeplan.hf_config``), or a mapping of either kind."""
    from .hf_config import config_file, is_hf_config, model_name, read_hf_config  # it imports this module

    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    if isinstance(name_or_path, dict):
        return read_hf_config(name_or_path) if is_hf_config(name_or_path) else ModelSpec.from_dict(name_or_path)
    if name_or_path in MODEL_PRESETS:
        return MODEL_PRESETS[name_or_path]
    path = config_file(Path(name_or_path))
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise SpecError(f"model: unknown preset {name_or_path!r}; choose one of {', '.join(MODEL_PRESETS)}, "
                        "a .json/.yaml file or a Hugging Face model folder (with config.json)")
    data = load_mapping(path, "model")
    return read_hf_config(data, model_name(path)) if is_hf_config(data) else ModelSpec.from_dict(data)
