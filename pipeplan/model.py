"""Model specs: a model is a list of layers (embedding, transformer blocks, final norm + LM head).

Every per-layer quantity is a function of micro-batch size b and sequence length s, derived from
the architecture's shapes so that the textbook numbers fall out:

* forward FLOPs of a dense GPT block 24·b·s·h² + 4·b·s²·h (Narayanan et al., SC'21);
* stored activations of a GPT block with dropout 34·s·b·h bytes without the attention-score term
  that FlashAttention removes (Korthikanti et al., 2022, Table 2);
* full recomputation keeps only the block input, 2·s·b·h bytes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import SpecError, positive_int
from .fileio import load_mapping

BYTES_BF16 = 2
EMBEDDING, BLOCK, HEAD = "embedding", "block", "head"


@dataclass(frozen=True)
class LayerCost:
    """One layer for one micro-batch: FLOPs split the way the backward splits them."""

    forward_flops: float
    input_grad_flops: float  # I: dX for every matmul, and the whole attention-core backward
    weight_grad_flops: float  # W: dW for every matmul
    params: float
    activation_bytes: float  # stored by F for the backward, without recomputation
    weight_grad_bytes: float  # the part of it W still needs after I: the inputs of the matmuls
    recompute_bytes: float  # stored with full recomputation: the layer input only
    boundary_bytes: float  # the tensor sent to the next stage (and its gradient back)


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, described by its hyper-parameters.

    ``gated_mlp`` selects SwiGLU (three h x ffn matrices, Llama) over GeLU (two, GPT);
    ``kv_heads`` < ``heads`` is grouped-query attention; ``dropout`` adds the 1-byte masks GPT keeps.
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

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * (self.kv_heads or self.heads)

    @property
    def layer_kinds(self) -> list[str]:
        """Layer i of the pipeline: the embedding, the blocks, then the final norm + LM head."""
        return [EMBEDDING] + [BLOCK] * self.num_layers + [HEAD]

    @property
    def num_pipeline_layers(self) -> int:
        return self.num_layers + 2

    def total_params(self) -> float:
        return sum(self.layer_cost(i, 1, self.seq_len).params for i in range(self.num_pipeline_layers))

    def layer_cost(self, index: int, microbatch: int, seq_len: int | None = None) -> LayerCost:
        s = seq_len or self.seq_len
        kind = self.layer_kinds[index]
        if kind == EMBEDDING:
            return self._embedding_cost(microbatch, s)
        if kind == HEAD:
            return self._head_cost(microbatch, s)
        return self._block_cost(microbatch, s)

    def _block_cost(self, b: int, s: int) -> LayerCost:
        h, f, kv, t = self.hidden, self.ffn_hidden, self.kv_dim, b * s
        mlp_mats = 3 if self.gated_mlp else 2
        matmul_params = h * h + 2 * h * kv + h * h + mlp_mats * h * f
        matmul_flops = 2 * t * matmul_params
        attention_flops = 4 * b * s * s * h  # QK^T and AV, counted dense as in Narayanan et al.
        mask = 1 if self.dropout else 0
        # Saved for backward, in bytes, element by element (bf16 = 2, dropout masks = 1):
        attention = t * (2 * h + 2 * h + 2 * h + 2 * 2 * kv + 2 * h + mask * h)  # norm in, QKV in, Q, K, V, O in, mask
        mlp_inner = (3 if self.gated_mlp else 2) * f  # gate+up+act(gate)*up, or fc1 out + gelu out
        mlp = t * (2 * h + 2 * h + 2 * mlp_inner + mask * h)  # norm in, fc1 in, inner, mask
        matmul_inputs = t * 2 * (h + h + h + f)  # QKV in, O in, fc1 in, fc2 in
        return LayerCost(
            forward_flops=matmul_flops + attention_flops,
            input_grad_flops=matmul_flops + 2 * attention_flops,
            weight_grad_flops=matmul_flops,
            params=matmul_params + 2 * h,
            activation_bytes=attention + mlp,
            weight_grad_bytes=matmul_inputs,
            recompute_bytes=BYTES_BF16 * t * h,
            boundary_bytes=BYTES_BF16 * t * h,
        )

    def _embedding_cost(self, b: int, s: int) -> LayerCost:
        h, t = self.hidden, b * s
        params = self.vocab * h + (self.seq_len * h if self.learned_positions else 0)
        mask = t * h if self.dropout else 0
        return LayerCost(
            forward_flops=2 * t * h,  # a gather and an add: memory-bound, FLOPs are nominal
            input_grad_flops=0.0,
            weight_grad_flops=2 * t * h,
            params=params,
            activation_bytes=mask,
            weight_grad_bytes=0.0,
            recompute_bytes=mask,
            boundary_bytes=BYTES_BF16 * t * h,
        )

    def _head_cost(self, b: int, s: int) -> LayerCost:
        h, v, t = self.hidden, self.vocab, b * s
        logits_flops = 2 * t * h * v
        # norm input, LM-head input, and the bf16 logits the fused cross-entropy turns into gradients
        stored = t * (2 * h + 2 * h + 2 * v)
        return LayerCost(
            forward_flops=logits_flops,
            input_grad_flops=logits_flops,
            weight_grad_flops=logits_flops,
            params=v * h + h,
            activation_bytes=stored,
            weight_grad_bytes=t * 2 * h,
            recompute_bytes=BYTES_BF16 * t * h,
            boundary_bytes=0.0,  # the loss is a scalar
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
