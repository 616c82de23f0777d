"""``pipeplan models`` and ``pipeplan clusters``: the built-in presets and their key numbers."""
from __future__ import annotations

import argparse

from ..cluster import CLUSTER_PRESETS
from ..model import MODEL_PRESETS
from .output import fmt_bytes, print_json, table


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list the model presets")
    m.add_argument("--json", action="store_true")
    m.set_defaults(handler=run_models)
    c = sub.add_parser("clusters", help="list the cluster presets")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=run_clusters)


def run_models(args: argparse.Namespace) -> int:
    if args.json:
        print_json({name: {**m.to_dict(), "params": m.total_params()} for name, m in MODEL_PRESETS.items()})
        return 0
    rows = [
        [name, f"{m.total_params() / 1e9:.2f} B", m.num_layers, m.hidden, m.heads, m.kv_heads or m.heads,
         m.ffn_hidden, m.vocab, m.seq_len, "swiglu" if m.gated_mlp else "gelu"]
        for name, m in MODEL_PRESETS.items()
    ]
    print(table(["model", "params", "blocks", "hidden", "heads", "kv", "ffn", "vocab", "seq", "mlp"], rows))
    return 0


def run_clusters(args: argparse.Namespace) -> int:
    if args.json:
        print_json({name: c.to_dict() for name, c in CLUSTER_PRESETS.items()})
        return 0
    rows = [
        [name, c.gpu.name, f"{c.gpu.peak_flops / 1e12:.0f} TFLOP/s", fmt_bytes(c.gpu.memory_bytes), c.gpus_per_node,
         f"{c.intra.name} {c.intra.bandwidth / 1e9:.0f} GB/s {c.intra.latency * 1e6:.0f} us",
         f"{c.inter.name} {c.inter.bandwidth / 1e9:.1f} GB/s x{c.nics_per_node} {c.inter.latency * 1e6:.0f} us"]
        for name, c in CLUSTER_PRESETS.items()
    ]
    print(table(["cluster", "gpu", "bf16 peak", "memory", "gpus/node", "intra-node", "inter-node"], rows))
    print("\nlink bandwidths are one way per port; use --nodes N on the commands that take a cluster")
    return 0
