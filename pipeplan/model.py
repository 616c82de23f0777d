"""Model specs: a model is a list of layers (embedding, transformer blocks, final norm + LM head).

Every per-layer quantity is a function of micro-batch size b, sequence length s and the
tensor-parallel layout (t ranks, sequence parallelism or not), derived from the architecture's
shapes so that the textbook numbers fall out, and is what ONE tensor-parallel rank does and holds:

* forward FLOPs of a dense GPT block (24·b·s·h² + 4·b·s²·h) / t (Narayanan et al., SC'21; the
  GEMMs of Shoeybi et al. 2019, "Megatron-LM", split column- then row-parallel over t); in general
  2·b·s·(the block's matrix parameters) + 4·b·s²·heads·head_dim (bias adds are left out);
* stored activations of a GPT block with dropout, Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models", Table 2): s·b·h·(10 + 24/t + 5·a·s/(h·t)) bytes
  without sequence parallelism, s·b·h/t·(34 + 5·a·s/h) with it; the 5·a·s/h attention-score term
  is absent with FlashAttention-style kernels (``attention="flash"``, the default) and with
  selective recomputation;
* full recomputation keeps only the block input, 2·s·b·h bytes (/t with sequence parallelism);
* the tensor-parallel collectives of each layer (Shoeybi et al. 2019 Fig. 3: 2 all-reduces of
  s·b·h values in the forward, 2 in the backward; Korthikanti et al. 2022 Sec. 4.2.2: an all-gather
  and a reduce-scatter instead of each with sequence parallelism); the embedding and LM head are
  vocabulary-parallel (Megatron ``VocabParallelEmbedding``, ``vocab_parallel_cross_entropy``);
* the GEMM shapes (so that a GPU's efficiency can depend on the shape, ``GPUSpec.gemm_seconds``)
  and the bytes the memory-bound kernels move (norms, residual adds, dropout, activation, softmax).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .collectives import ALL_GATHER, ALL_REDUCE, REDUCE_SCATTER
from .errors import SpecError, name_text, positive_int
from .fileio import load_mapping
from .megatron_kernels import KERNEL_CHOICES, with_kernels

BYTES_BF16 = 2
EMBEDDING, BLOCK, HEAD = "embedding", "block", "head"
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
    recompute_bytes: float  # stored with full recomputation: the layer input only
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
                   sequence_parallel: bool = False) -> LayerCost:
        """Layer ``index`` for ``microbatch`` sequences of ``seq_len`` on one of ``tp`` tensor-parallel ranks."""
        s = seq_len or self.seq_len
        self.check_tp(tp)
        kind = self.layer_kind(index)
        cost = (self._embedding_cost if kind == EMBEDDING else self._head_cost if kind == HEAD else
                self._block_cost)(microbatch, s, tp, sequence_parallel)
        return with_kernels(self.kernels, kind, cost, microbatch * s, self.hidden, self.vocab, tp)

    @property
    def block_matrix_params(self) -> int:
        """The weight matrices of one block: Q, K, V, O and the MLP's two (three when gated)."""
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        return h * q + 2 * h * kv + q * h + (3 if self.gated_mlp else 2) * h * self.ffn_hidden

    def _block_params(self, tp: int) -> float:
        """One rank's share: the matrices and the biases of their column-parallel outputs split over
        t, the biases after a row-parallel matrix (O, fc2) and the norms replicated."""
        h, f, q, kv = self.hidden, self.ffn_hidden, self.q_dim, self.kv_dim
        split = self.block_matrix_params + (q + 2 * kv if self.qkv_bias else 0)
        split += ((2 if self.gated_mlp else 1) * f if self.mlp_bias else 0)
        replicated = self.block_norms * self.norm_params(h) + (2 * self.norm_params(self.head_size) if self.qk_norm else 0)
        replicated += (h if self.out_bias else 0) + (h if self.mlp_bias else 0)
        return split / tp + replicated

    def _block_cost(self, b: int, s: int, tp: int, sp: bool) -> LayerCost:
        h, f, kv, q, n, a = self.hidden, self.ffn_hidden, self.kv_dim, self.q_dim, b * s, self.heads
        mlp_mats = 3 if self.gated_mlp else 2
        matmul_params = self.block_matrix_params
        gemms = ((n, (q + 2 * kv) / tp, h, 1), (n, h, q / tp, 1),  # QKV (column-), O (row-parallel)
                 (n, (mlp_mats - 1) * f / tp, h, 1), (n, h, f / tp, 1))  # fc1 (+ gate), fc2
        d = self.head_size
        attention_gemms = ((s, s, d, b * a // tp), (s, d, s, b * a // tp))  # QK^T, AV per head
        matmul_flops = 2 * n * matmul_params / tp
        attention_flops = 4 * b * s * s * q / tp  # QK^T and AV, counted dense as in Narayanan et al.
        mask = 1 if self.dropout else 0
        # Saved for backward, in bytes, element by element (bf16 = 2, dropout masks = 1), split the
        # way Korthikanti et al. 2022 Sec. 4.1 splits them: ``replicated`` on every tensor rank unless
        # sequence parallelism shards it (norm inputs, QKV and fc1 inputs, dropout masks),
        # ``split`` inside the tensor-parallel regions (Q, K, V, O input, MLP inner activations).
        mlp_inner = (3 if self.gated_mlp else 2) * f  # gate+up+act(gate)*up, or fc1 out + gelu out
        replicated = 2 * h * self.block_norms + 2 * h + 2 * h + 2 * mask * h
        split = 2 * q + 2 * 2 * kv + 2 * q + 2 * mlp_inner
        score = (2 + 3 * mask) * a * s if self.attention == "standard" else 0  # softmax out, mask, dropout out
        rep_share = 1 / tp if sp else 1
        activation = n * (replicated * rep_share + (split + score) / tp)
        selective = n * (replicated * rep_share + split / tp)
        # Memory-bound kernels per token, read + write, bf16: the norms, two residual adds (with dropout:
        # read, write, mask), the MLP activation; the backward counted twice the forward; sequence
        # parallelism splits the norm/dropout region over t. Scores per score element as Megatron's kernels
        # move them: the causal softmax reads the lower triangle, writes the row (1 + 2; backward 2 + 2,
        # scaled_upper_triang_masked_softmax.h); dropout 2 + 2 + a 1-byte mask (backward 2 + 1 + 2).
        act_bytes = (6 if self.gated_mlp else 4) * f / tp
        elementwise = n * ((4 * h * self.block_norms + 12 * h + 2 * mask * h) * rep_share + act_bytes)
        standard = self.attention == "standard"
        scores = n * ((3 + 5 * mask) * s * a / tp if standard else 0.0)
        scores_backward = n * ((4 + 5 * mask) * s * a / tp if standard else 0.0)
        boundary = BYTES_BF16 * n * h
        if tp == 1:
            tp_f = tp_b = ()
        elif sp:
            tp_f = tp_b = ((ALL_GATHER, boundary), (REDUCE_SCATTER, boundary)) * 2
        else:
            tp_f = tp_b = ((ALL_REDUCE, boundary),) * 2
        return LayerCost(
            forward_flops=matmul_flops + attention_flops,
            input_grad_flops=matmul_flops + 2 * attention_flops,
            weight_grad_flops=matmul_flops,
            params=self._block_params(tp),
            activation_bytes=activation,
            weight_grad_bytes=n * ((2 * h + 2 * h) * rep_share + (2 * q + 2 * f) / tp),  # QKV, fc1 | O, fc2 inputs
            recompute_bytes=boundary * rep_share,
            boundary_bytes=boundary * rep_share,
            selective_bytes=selective,
            gemms=gemms,
            attention_gemms=attention_gemms,
            forward_memory_bytes=elementwise + scores,
            input_grad_memory_bytes=2 * elementwise + scores_backward,
            score_memory_bytes=scores,
            score_backward_memory_bytes=scores_backward,
            tp_forward=tp_f,
            tp_backward=tp_b,
        )

    def _embedding_cost(self, b: int, s: int, tp: int, sp: bool) -> LayerCost:
        h, e, n = self.hidden, self.embedding_width, b * s
        share = 1 / tp if sp else 1
        rows = self.position_rows or self.seq_len
        # OPT's project_in (e -> h) when the token embedding is narrower than hidden; replicated
        project = ((n, h, e, 1),) if e != h else ()
        project_flops = 2 * n * e * h if e != h else 0.0
        project_input = BYTES_BF16 * n * e if e != h else 0.0  # kept for project_in's dW
        params = self.vocab * e / tp + (rows * h if self.learned_positions else 0) + (e * h if e != h else 0)
        mask = n * h * share if self.dropout else 0
        # gather (read, write), position add (read two, write), dropout (read, write, mask)
        moved = n * h * (4 + (6 if self.learned_positions else 0) + (5 if self.dropout else 0))
        boundary = BYTES_BF16 * n * h
        # Vocabulary-parallel lookup: each rank holds V/t rows; the partial outputs are summed
        # (reduce-scattered with sequence parallelism). Without sequence parallelism the backward needs
        # no collective (every rank already has the whole output gradient); with it, each rank's
        # gradient covers s/t of the sequence and is all-gathered for its rows' scatter-add.
        tp_f = () if tp == 1 else ((REDUCE_SCATTER if sp else ALL_REDUCE, boundary),)
        tp_b = ((ALL_GATHER, boundary),) if tp > 1 and sp else ()
        return LayerCost(
            forward_flops=2 * n * h + project_flops,  # a gather and an add: memory-bound, FLOPs are nominal
            input_grad_flops=project_flops,  # project_in's dX: the gradient the embedding rows get
            weight_grad_flops=2 * n * h + project_flops,
            params=params,
            activation_bytes=mask + project_input,
            weight_grad_bytes=project_input,
            recompute_bytes=mask,
            boundary_bytes=boundary * share,
            selective_bytes=mask + project_input,
            gemms=project,
            forward_memory_bytes=moved,
            weight_grad_memory_bytes=2 * moved,  # the scatter-add into the embedding's gradient
            tp_forward=tp_f,
            tp_backward=tp_b,
        )

    def _head_cost(self, b: int, s: int, tp: int, sp: bool) -> LayerCost:
        """The final norm, OPT's project_out (h -> e) when the embedding is narrower, and the LM head.

        A tied LM head is the token embedding's matrix; its stage still holds a copy (Megatron keeps
        one on the last pipeline stage and all-reduces the two gradients), so ``params`` count it and
        ``total_params`` takes it off once.
        """
        h, v, e, n = self.hidden, self.vocab, self.embedding_width, b * s
        share = 1 / tp if sp else 1
        logits_flops = 2 * n * e * v / tp
        project = ((n, e, h, 1),) if e != h else ()  # replicated on every tensor rank
        project_flops = 2 * n * h * e if e != h else 0.0
        norm_input = 2 * h if self.final_norm else 0
        # norm input, first matmul's input (project_out's, then the LM head's), and the bf16 logits
        # the fused cross-entropy turns into gradients
        stored = n * ((norm_input + 2 * h) * share + (2 * e if e != h else 0) + 2 * v / tp)
        # final norm (read, write); cross-entropy: read bf16 logits, write fp32 softmax; backward
        # reads it and writes bf16 gradients
        moved = n * (2 * norm_input * share + 6 * v / tp)
        boundary = BYTES_BF16 * n * h
        if tp == 1:
            tp_f = tp_b = ()
        else:
            # vocab-parallel cross-entropy: max, sum of exponentials and target logit, one fp32 per token each
            ce = ((ALL_REDUCE, 4.0 * n),) * 3
            tp_f = ((ALL_GATHER, boundary),) + ce if sp else ce
            tp_b = ((REDUCE_SCATTER if sp else ALL_REDUCE, boundary),)  # the head input's gradient
        return LayerCost(
            forward_flops=logits_flops + project_flops,
            input_grad_flops=logits_flops + project_flops,
            weight_grad_flops=logits_flops + project_flops,
            params=v * e / tp + (self.norm_params(h) if self.final_norm else 0) + (h * e if e != h else 0),
            activation_bytes=stored,
            weight_grad_bytes=n * (2 * h * share + (2 * e if e != h else 0)),
            recompute_bytes=boundary * share,
            boundary_bytes=0.0,  # the loss is a scalar
            selective_bytes=stored,
            gemms=((n, v / tp, e, 1),) + project,
            forward_memory_bytes=moved,
            input_grad_memory_bytes=moved,
            tp_forward=tp_f,
            tp_backward=tp_b,
        )

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
