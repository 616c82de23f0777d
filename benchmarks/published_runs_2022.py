"""Predict Korthikanti et al. 2022's runs a priori and compare: selective recomputation + sequence parallelism.

"Reducing Activation Recomputation in Large Transformer Models" (arXiv 2205.05198): GPT models on DGX
A100 80 GB nodes, vocabulary 51,200, sequence 2048, FFN 4h, t = 8, data-parallel size one, Megatron-LM
of 2022. Three checks of the same cost model at three scales:

* Table 4, one transformer layer of the 22B model (b = 4): forward and backward milliseconds for no
  recomputation, sequence parallelism, full recomputation, selective recomputation, and both;
* Table 5, whole iterations: "present work" (selective recomputation + sequence parallelism) and the
  full-recomputation baseline (no sequence parallelism), seconds per iteration.

Sources: the model FLOPs utilization (MFU) and hardware FLOPs utilization (HFU) of the present-work runs
are verbatim from the Megatron-LM README (commit 2e90a342f5, May 2022: 41.5/43.7, 51.4/52.8,
56.0/57.0, 56.3/57.0 %, "measured using a data parallel size of one"). Tables 3 (configurations),
4 and 5 are not in a stored copy of the paper here; their figures come from a third-party transcription
of the paper in a public repository's notes (the code index's file 55271916660), and they agree with
the README: model FLOPs over (MFU x GPUs x 312 TFLOP/s) gives the transcribed present-work times
(1.10, 13.75, 37.83, 71.49 s) to 0.3 %. The transcription gives the micro-batch (4 for 22B, 1 for the
others) and interleaving with three stages per device for 175B and 530B.

Every run is simulated with the ``dgx-a100`` preset; nothing is fitted. Plans: Megatron's even split
(embedding on the first stage, LM head on the last), 1F1B or interleaved, ``blocking_p2p`` (Megatron of
2022 still waited for each batch_isend_irecv, then synchronized), standard (non-Flash) attention with
dropout and the extra memory-bound passes of Megatron-LM's code of May 2022 (``kernels="megatron-2022"``,
``pipeplan.megatron_kernels``: the QKV bias added after the GEMM, layout copies, the fp32 cross-entropy,
and ``--fp16``'s optimizer step, 52 bytes a parameter); full recomputation checkpoints the blocks only;
the full-recomputation runs scatter each pipeline message over the tensor ranks
(``scatter_gather_p2p``: ``--scatter-gather-tensors-in-pipeline`` was on by default in May 2022). With
sequence parallelism Megatron split the already sequence-sharded message once more over the ranks; the
plans cannot say that (``scatter_gather_p2p`` needs sp off), so they send s·b·h/t bytes a rank.

Megatron of 2022 ran the backward's tensor-parallel collectives asynchronously (``mpu/layers.py``,
``LinearWithGradAccumulationAndAsyncCommunication``): the input gradient's all-reduce beside the
weight-gradient GEMM; with sequence parallelism the input's second all-gather beside the input-gradient
GEMM and the reduce-scatter beside the weight-gradient GEMM. The cost model prices those collectives
(the second all-gather included) on the backward's critical path: what running beside a GEMM costs both
(SMs and memory they share) is not modelled, so the backward is expected slower than Table 4's and the
forward, whose collectives are on its critical path in Megatron too, is the cleaner check.

Run: python benchmarks/published_runs_2022.py
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeplan import simulate  # noqa: E402
from pipeplan.cluster import load_cluster  # noqa: E402
from pipeplan.costs import layer_work, price  # noqa: E402
from pipeplan.model import ModelSpec  # noqa: E402
from pipeplan.plan import Plan  # noqa: E402

VOCAB, SEQ, TP = 51200, 2048, 8
A100_PEAK = 312e12  # dense fp16/bf16 tensor-core FLOP/s, the peak MFU and HFU divide by


@dataclass(frozen=True)
class Run:
    """One model of Korthikanti et al. 2022 (t = 8, dp = 1): its configuration and published figures."""

    name: str
    layers: int
    hidden: int
    heads: int
    pp: int
    batch: int
    microbatch: int
    chunks: int  # virtual stages per device (1: plain 1F1B)
    published_mfu: float  # present work (Megatron-LM README)
    published_hfu: float
    present_seconds: float  # Table 5: selective recomputation + sequence parallelism
    full_recompute_seconds: float  # Table 5: full recomputation, no sequence parallelism

    @property
    def gpus(self) -> int:
        return TP * self.pp

    @property
    def num_microbatches(self) -> int:
        return self.batch // self.microbatch


TABLE = (
    Run("22B", 48, 6144, 64, 1, 4, 4, 1, 0.415, 0.437, 1.10, 1.42),
    Run("175B", 96, 12288, 96, 8, 64, 1, 3, 0.514, 0.528, 13.75, 18.13),
    Run("530B", 105, 20480, 128, 35, 280, 1, 3, 0.560, 0.570, 37.83, 49.05),
    Run("1T", 128, 25600, 160, 64, 512, 1, 1, 0.563, 0.570, 71.49, 94.42),
)

# Table 4: one layer of the 22B model, b = 4: (recomputation, sequence parallelism) -> forward, backward ms
LAYER_22B = {("none", False): (7.7, 11.9), ("none", True): (7.2, 11.8), ("full", False): (7.7, 19.5),
             ("selective", False): (7.7, 13.2), ("selective", True): (7.2, 13.1)}


def model_of(run: Run) -> ModelSpec:
    return ModelSpec(f"gpt-{run.name}", run.layers, run.hidden, run.heads, 4 * run.hidden, VOCAB, SEQ,
                     dropout=True, learned_positions=True, attention="standard", kernels="megatron-2022")


def plan_of(run: Run, present: bool = True) -> Plan:
    """Megatron's layout: l / (p·v) blocks a stage, the embedding first and the LM head last; ``present``:
    selective recomputation with sequence parallelism, else full recomputation without."""
    stages = run.pp * run.chunks
    per_stage = run.layers // stages
    if per_stage * stages != run.layers:
        raise ValueError(f"{run.name}: {run.layers} blocks do not split evenly over {stages} stages")
    layers = [per_stage] * stages
    layers[0] += 1
    layers[-1] += 1
    return Plan(model=model_of(run).to_dict(), cluster="dgx-a100",
                schedule="interleaved" if run.chunks > 1 else "1f1b", pp=run.pp,
                num_microbatches=run.num_microbatches, microbatch_size=run.microbatch,
                layers_per_stage=tuple(layers), chunks=run.chunks,
                recompute=("selective" if present else "full",) * stages, nodes=run.gpus // 8, dp=1, tp=TP,
                sequence_parallel=present, blocking_p2p=True, scatter_gather_p2p=not present)


def layer_milliseconds(recompute: str, sequence_parallel: bool) -> tuple[float, float]:
    """One 22B block (b = 4) on one dgx-a100 GPU of a t = 8 group: (forward, backward) ms, as ``price`` makes them."""
    cluster = load_cluster("dgx-a100")
    work = layer_work(model_of(TABLE[0]), 1, 4, SEQ, recompute, TP, sequence_parallel)
    cost = price(work, cluster.gpu, cluster.intra)
    return cost.forward * 1e3, (cost.backward_input + cost.backward_weight) * 1e3


def model_flops(run: Run) -> float:
    """Model FLOPs of one iteration, no recomputation: 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h))
    (Korthikanti et al. 2022, Sec. 6.3; Narayanan et al.'s eq. 3 with three passes instead of four)."""
    l, h, s, v = run.layers, run.hidden, SEQ, VOCAB
    return 72 * run.batch * s * l * h * h * (1 + s / (6 * h) + v / (12 * l * h))


def predicted_seconds(run: Run, present: bool = True) -> float:
    """The simulated iteration time of ``run`` (present work, or the full-recomputation baseline)."""
    return simulate(plan=plan_of(run, present)).iteration_time


def predicted_mfu(run: Run) -> float:
    """The MFU the simulator predicts for the present-work run: model FLOPs over (time x GPUs x peak)."""
    return model_flops(run) / (predicted_seconds(run) * run.gpus * A100_PEAK)


def main() -> None:
    print("Korthikanti et al. 2022 on dgx-a100, a priori (t=8, dp=1; error > 0: predicted faster)")
    print("Table 4, one 22B layer (b=4), ms:")
    for (recompute, sp), (forward, backward) in LAYER_22B.items():
        f, b = layer_milliseconds(recompute, sp)
        print(f"  {recompute:>9} {'sp' if sp else '  '}  forward {forward:4.1f} vs {f:5.2f}  backward {backward:4.1f} "
              f"vs {b:5.2f}  both {forward + backward:4.1f} vs {f + b:5.2f} {(forward + backward) / (f + b) - 1:+6.1%}")
    print(f"Table 5, iteration seconds:\n{'model':>6} {'p':>3} {'v':>2} {'GPUs':>5} {'B':>4} {'b':>2}  "
          f"{'selective+sp':>12} {'predicted':>9} {'error':>7} {'MFU':>6}  {'full':>6} {'predicted':>9} {'error':>7}")
    errors = []
    for run in TABLE:
        present, full = predicted_seconds(run), predicted_seconds(run, present=False)
        e_present, e_full = run.present_seconds / present - 1, run.full_recompute_seconds / full - 1
        errors += [abs(e_present), abs(e_full)]
        mfu = model_flops(run) / (present * run.gpus * A100_PEAK)
        print(f"{run.name:>6} {run.pp:>3} {run.chunks:>2} {run.gpus:>5} {run.batch:>4} {run.microbatch:>2}  "
              f"{run.present_seconds:>12.2f} {present:>9.2f} {e_present:>+7.1%} {mfu:>6.1%}  "
              f"{run.full_recompute_seconds:>6.2f} {full:>9.2f} {e_full:>+7.1%}")
    print(f"mean absolute error {sum(errors) / len(errors):.1%}, worst {max(errors):.1%} over the 8 runs "
          f"(targets: mean <= 10 %, every run within 20 %)")


if __name__ == "__main__":
    main()
