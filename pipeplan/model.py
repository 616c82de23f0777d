"""Model specs: a model is a list of layers (embedding, transformer blocks, final norm + LM head).

Every per-layer quantity is a function of micro-batch size b, sequence length s and the
tensor-parallel layout (t ranks, sequence parallelism or not), derived from the architecture's
shapes so that the textbook numbers fall out, and is what ONE tensor-parallel rank does and holds:

* forward FLOPs of a dense GPT block (24·b·s·h² + 4·b·s²·h) / t (Narayanan et al., SC'21; the
  GEMMs of Shoeybi et al. 2019, "Megatron-LM", split column- then row-parallel over t);
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
from typing import Any

from .collectives import ALL_GATHER, ALL_REDUCE, REDUCE_SCATTER
from .errors import SpecError, positive_int
from .fileio import load_mapping

BYTES_BF16 = 2
EMBEDDING, BLOCK, HEAD = "embedding", "block", "head"
ATTENTION_CHOICES = ("flash", "standard")

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
    tp_forward: tuple[TPCollective, ...] = ()
    tp_backward: tuple[TPCollective, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, described by its hyper-parameters.

    ``gated_mlp`` selects SwiGLU (three h x ffn matrices, Llama) over GeLU (two, GPT);
    ``kv_heads`` < ``heads`` is grouped-query attention; ``dropout`` adds the 1-byte masks GPT keeps.
    ``attention`` is the attention kernel: ``"flash"`` (FlashAttention, Dao et al. 2022: the s x s
    scores never reach memory) or ``"standard"`` (softmax and dropout over stored scores, as
    Megatron-LM's fused softmax in 2021).
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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise SpecError(f"model.name: must be text (got {self.name!r})")
        for f in ("gated_mlp", "dropout", "learned_positions"):
            if not isinstance(getattr(self, f), bool):  # "false" would be truthy
                raise SpecError(f"model.{f}: must be true or false (got {getattr(self, f)!r})")
        for f in ("num_layers", "hidden", "heads", "ffn_hidden", "vocab", "seq_len"):
            positive_int(f"model.{f}", getattr(self, f))
        if self.kv_heads is not None:
            positive_int("model.kv_heads", self.kv_heads)
            if self.heads % self.kv_heads:
                raise SpecError(f"model.kv_heads: {self.kv_heads} must divide heads ({self.heads})")
        if self.hidden % self.heads:
            raise SpecError(f"model.heads: {self.heads} must divide hidden ({self.hidden})")
        if self.attention not in ATTENTION_CHOICES:
            raise SpecError(f"model.attention: {self.attention!r} is not one of {', '.join(ATTENTION_CHOICES)}")

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * (self.kv_heads or self.heads)

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
        return sum(self.layer_cost(i, 1, self.seq_len).params for i in range(self.num_pipeline_layers))

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
        if kind == EMBEDDING:
            return self._embedding_cost(microbatch, s, tp, sequence_parallel)
        if kind == HEAD:
            return self._head_cost(microbatch, s, tp, sequence_parallel)
        return self._block_cost(microbatch, s, tp, sequence_parallel)

    def _block_cost(self, b: int, s: int, tp: int, sp: bool) -> LayerCost:
        h, f, kv, n, a = self.hidden, self.ffn_hidden, self.kv_dim, b * s, self.heads
        mlp_mats = 3 if self.gated_mlp else 2
        matmul_params = h * h + 2 * h * kv + h * h + mlp_mats * h * f
        gemms = ((n, (h + 2 * kv) / tp, h, 1), (n, h, h / tp, 1),  # QKV (column-), O (row-parallel)
                 (n, (mlp_mats - 1) * f / tp, h, 1), (n, h, f / tp, 1))  # fc1 (+ gate), fc2
        d = h // a
        attention_gemms = ((s, s, d, b * a // tp), (s, d, s, b * a // tp))  # QK^T, AV per head
        matmul_flops = 2 * n * matmul_params / tp
        attention_flops = 4 * b * s * s * h / tp  # QK^T and AV, counted dense as in Narayanan et al.
        mask = 1 if self.dropout else 0
        # Saved for backward, in bytes, element by element (bf16 = 2, dropout masks = 1), split the
        # way Korthikanti et al. 2022 Sec. 4.1 splits them: ``replicated`` on every tensor rank unless
        # sequence parallelism shards it (norm inputs, QKV and fc1 inputs, dropout masks),
        # ``split`` inside the tensor-parallel regions (Q, K, V, O input, MLP inner activations).
        mlp_inner = (3 if self.gated_mlp else 2) * f  # gate+up+act(gate)*up, or fc1 out + gelu out
        replicated = 2 * h + 2 * h + 2 * h + 2 * h + 2 * mask * h
        split = 2 * h + 2 * 2 * kv + 2 * h + 2 * mlp_inner
        score = (2 + 3 * mask) * a * s if self.attention == "standard" else 0  # softmax out, mask, dropout out
        rep_share = 1 / tp if sp else 1
        activation = n * (replicated * rep_share + (split + score) / tp)
        selective = n * (replicated * rep_share + split / tp)
        # Memory-bound kernels per token, read + write, bf16: two norms, two residual adds (with
        # dropout: read, write, mask), the MLP activation, and with standard attention the softmax
        # over the scores (read, write) and its dropout (read, write, mask). The backward reads
        # the saved tensors and the output gradient and writes the input gradient: counted twice
        # the forward. Sequence parallelism splits the norm/dropout region over t.
        act_bytes = (6 if self.gated_mlp else 4) * f / tp
        elementwise = n * ((8 * h + 12 * h + 2 * mask * h) * rep_share + act_bytes)
        scores = n * ((4 + 5 * mask) * s * a / tp if self.attention == "standard" else 0.0)
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
            params=matmul_params / tp + 2 * h,
            activation_bytes=activation,
            weight_grad_bytes=n * ((2 * h + 2 * h) * rep_share + (2 * h + 2 * f) / tp),  # QKV, fc1 | O, fc2 inputs
            recompute_bytes=boundary * rep_share,
            boundary_bytes=boundary * rep_share,
            selective_bytes=selective,
            gemms=gemms,
            attention_gemms=attention_gemms,
            forward_memory_bytes=elementwise + scores,
            input_grad_memory_bytes=2 * (elementwise + scores),
            score_memory_bytes=scores,
            tp_forward=tp_f,
            tp_backward=tp_b,
        )

    def _embedding_cost(self, b: int, s: int, tp: int, sp: bool) -> LayerCost:
        h, n = self.hidden, b * s
        share = 1 / tp if sp else 1
        params = self.vocab * h / tp + (self.seq_len * h if self.learned_positions else 0)
        mask = n * h * share if self.dropout else 0
        # gather (read, write), position add (read two, write), dropout (read, write, mask)
        moved = n * h * (4 + (6 if self.learned_positions else 0) + (5 if self.dropout else 0))
        boundary = BYTES_BF16 * n * h
        # Vocabulary-parallel lookup: each rank holds V/t rows; the partial outputs are summed
        # (reduce-scattered with sequence parallelism). The backward needs no collective.
        tp_f = () if tp == 1 else ((REDUCE_SCATTER if sp else ALL_REDUCE, boundary),)
        return LayerCost(
            forward_flops=2 * n * h,  # a gather and an add: memory-bound, FLOPs are nominal
            input_grad_flops=0.0,
            weight_grad_flops=2 * n * h,
            params=params,
            activation_bytes=mask,
            weight_grad_bytes=0.0,
            recompute_bytes=mask,
            boundary_bytes=boundary * share,
            selective_bytes=mask,
            forward_memory_bytes=moved,
            weight_grad_memory_bytes=2 * moved,  # the scatter-add into the embedding's gradient
            tp_forward=tp_f,
        )

    def _head_cost(self, b: int, s: int, tp: int, sp: bool) -> LayerCost:
        h, v, n = self.hidden, self.vocab, b * s
        share = 1 / tp if sp else 1
        logits_flops = 2 * n * h * v / tp
        # norm input, LM-head input, and the bf16 logits the fused cross-entropy turns into gradients
        stored = n * ((2 * h + 2 * h) * share + 2 * v / tp)
        # final norm (read, write); cross-entropy: read bf16 logits, write fp32 softmax; backward
        # reads it and writes bf16 gradients
        moved = n * (4 * h * share + 6 * v / tp)
        boundary = BYTES_BF16 * n * h
        if tp == 1:
            tp_f = tp_b = ()
        else:
            # vocab-parallel cross-entropy: max, sum of exponentials and target logit, one fp32 per token each
            ce = ((ALL_REDUCE, 4.0 * n),) * 3
            tp_f = ((ALL_GATHER, boundary),) + ce if sp else ce
            tp_b = ((REDUCE_SCATTER if sp else ALL_REDUCE, boundary),)  # the head input's gradient
        return LayerCost(
            forward_flops=logits_flops,
            input_grad_flops=logits_flops,
            weight_grad_flops=logits_flops,
            params=v * h / tp + h,
            activation_bytes=stored,
            weight_grad_bytes=n * 2 * h * share,
            recompute_bytes=boundary * share,
            boundary_bytes=0.0,  # the loss is a scalar
            selective_bytes=stored,
            gemms=((n, v / tp, h, 1),),
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
    """A preset name, a JSON/YAML file of hyper-parameters, or a mapping."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    if isinstance(name_or_path, dict):
        return ModelSpec.from_dict(name_or_path)
    if name_or_path in MODEL_PRESETS:
        return MODEL_PRESETS[name_or_path]
    if not any(name_or_path.endswith(ext) for ext in (".json", ".yaml", ".yml")):
        raise SpecError(
            f"model: unknown preset {name_or_path!r}; choose one of {', '.join(MODEL_PRESETS)} or a .json/.yaml file"
        )
    return ModelSpec.from_dict(load_mapping(name_or_path, "model"))
