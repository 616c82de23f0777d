"""Predict published Megatron-LM runs a priori and compare: Narayanan et al., SC'21, Table 1.

"Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM" (arXiv 2104.04473),
Table 1: GPT models on DGX A100 80 GB nodes (8 GPUs, NVLink/NVSwitch, 8 x HDR 200 Gb/s InfiniBand),
vocabulary 51,200, sequence 2048, FFN 4h, fp16, full activation recomputation, no distributed
optimizer; achieved TFLOP/s per GPU as the paper's eq. 3 counts it (the recomputed forward included):

    96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)) / (iteration time · GPUs)

Every row is simulated with the ``dgx-a100`` preset and ``pipeplan.simulate``; nothing here is fitted
to the table (the GPU's efficiency model and its sources are ``pipeplan.cluster.GPUSpec``'s). Models
are Megatron's GPT of 2021: learned positions, dropout, standard (non-Flash) attention with the fused
softmax, and the extra memory-bound passes of Megatron-LM's code of April 2021 (``kernels=
"megatron-2021"``, ``pipeplan.megatron_kernels``: the QKV bias added after the GEMM, layout copies,
the fp32 cross-entropy, the per-micro-batch accumulation of fp16 gradients, and ``--fp16`` without
``--accumulate-allreduce-grads-in-fp32``: fp16 gradients reduced, the fp16 optimizer's five passes).
Full recomputation checkpoints the transformer layers only, as Megatron's ``_checkpointed_forward``
does (the embedding, final norm, LM head and loss are not re-run; eq. 3 counts the same). Plans:
dp = GPUs / (tp·pp), m = B / (dp·b); the interleaved schedule where the paper gives
virtual stages, else 1F1B; Megatron's even split (l / (pp·v) blocks a stage, the embedding on the first
stage and the LM head on the last).

Priced: the data-parallel gradient all-reduce (fp16 gradients, NCCL's rings over the stage's data
group, one per NIC its GPUs reach on a node, per bucket or per stage-chunk, see below) and the
optimizer step (Megatron's fp16 step, 52 bytes per parameter at the A100's streaming rate,
``pipeplan.megatron_kernels``). Megatron 2021's point-to-point exchanges block
(batch_isend_irecv, then wait, in its p2p_communication module; no --overlap-p2p-communication yet):
the plans say ``blocking_p2p``; and they scatter each pipeline message over the tensor ranks and
gather it over NVLink (``--scatter-gather-tensors-in-pipeline``, on by default then): the plans with
tp > 1 say ``scatter_gather_p2p``. The runs' own scripts (Megatron-LM ``examples/sc21/run_table_1.sh``,
container ``nvcr.io/nvidia/pytorch:20.12-py3``, ``--fp16``) choose the data-parallel implementation
per row: ``--DDP-impl torch`` up to 18.4B, whose PyTorch DistributedDataParallel all-reduces 25 MB
buckets while the (last micro-batch's) backward runs, and ``--DDP-impl local`` from 39.1B on, whose
``allreduce_gradients`` runs after the whole ``forward_backward_func`` (``--overlap-grad-reduce`` came
later): the plans say ``overlap_grad_reduce`` true with DDP's buckets on every stage, or false.

Run: python benchmarks/published_runs.py
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeplan import simulate  # noqa: E402
from pipeplan.dataparallel import DataParallelOptions  # noqa: E402
from pipeplan.model import ModelSpec  # noqa: E402
from pipeplan.plan import Plan  # noqa: E402

VOCAB, SEQ = 51200, 2048
CAVEAT = "2021's cuBLAS and NCCL are priced at today's measured A100 rates"
DDP_BUCKET_PARAMS = 25 * 2**20 // 2  # PyTorch DDP's bucket_cap_mb = 25 of fp16 gradients


@dataclass(frozen=True)
class Run:
    """One row of Table 1: the model, the parallel configuration, the published TFLOP/s per GPU."""

    name: str
    layers: int
    hidden: int
    heads: int
    tp: int
    pp: int
    gpus: int
    batch: int
    microbatch: int
    chunks: int  # virtual stages per device (1: plain 1F1B)
    published_tflops: float
    torch_ddp: bool = False  # --DDP-impl torch in run_table_1.sh (else local)

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp)

    @property
    def num_microbatches(self) -> int:
        return self.batch // (self.dp * self.microbatch)


TABLE_1 = (
    Run("1.7B", 24, 2304, 24, 1, 1, 32, 512, 16, 1, 137, torch_ddp=True),
    Run("3.6B", 30, 3072, 32, 2, 1, 64, 512, 16, 1, 138, torch_ddp=True),
    Run("7.5B", 36, 4096, 32, 4, 1, 128, 512, 16, 1, 142, torch_ddp=True),
    Run("18.4B", 40, 6144, 48, 8, 1, 256, 1024, 8, 1, 135, torch_ddp=True),
    Run("39.1B", 48, 8192, 64, 8, 2, 512, 1536, 4, 1, 138),
    Run("76.1B", 60, 10240, 80, 8, 4, 1024, 1792, 2, 3, 140),
    Run("145.6B", 80, 12288, 96, 8, 8, 1536, 2304, 2, 2, 148),
    Run("310.1B", 96, 16384, 128, 8, 16, 1920, 2160, 1, 2, 155),
    Run("529.6B", 105, 20480, 128, 8, 35, 2520, 2520, 1, 3, 163),
    Run("1008B", 128, 25600, 160, 8, 64, 3072, 3072, 1, 1, 163),
)


def model_of(run: Run) -> ModelSpec:
    return ModelSpec(f"gpt-{run.name}", run.layers, run.hidden, run.heads, 4 * run.hidden, VOCAB, SEQ,
                     dropout=True, learned_positions=True, attention="standard", kernels="megatron-2021")


def plan_of(run: Run) -> Plan:
    """Megatron's layout: l / (pp·v) blocks per stage, the embedding first and the LM head last."""
    stages = run.pp * run.chunks
    per_stage = run.layers // stages
    if per_stage * stages != run.layers:
        raise ValueError(f"{run.name}: {run.layers} blocks do not split evenly over {stages} stages")
    layers = [per_stage] * stages
    layers[0] += 1
    layers[-1] += 1
    return Plan(model=model_of(run).to_dict(), cluster="dgx-a100", schedule="interleaved" if run.chunks > 1 else "1f1b",
                pp=run.pp, num_microbatches=run.num_microbatches, microbatch_size=run.microbatch,
                layers_per_stage=tuple(layers), chunks=run.chunks, recompute=("full",) * stages,
                nodes=run.gpus // 8, dp=run.dp, tp=run.tp, blocking_p2p=True, scatter_gather_p2p=run.tp > 1,
                overlap_grad_reduce=run.torch_ddp)


def dp_options_of(run: Run) -> DataParallelOptions:
    """PyTorch DDP's 25 MB buckets on every stage for ``--DDP-impl torch``; Megatron's defaults otherwise."""
    if run.torch_ddp:
        return DataParallelOptions(bucket_params=DDP_BUCKET_PARAMS, bucketed_stages="every")
    return DataParallelOptions()


def megatron_flops(run: Run) -> float:
    """FLOPs of one iteration as Narayanan et al. eq. 3 counts them (with the recomputed forward)."""
    l, h, s, v = run.layers, run.hidden, SEQ, VOCAB
    return 96 * run.batch * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))


def predicted_tflops(run: Run) -> float:
    """TFLOP/s per GPU the simulator predicts for ``run`` (eq. 3 FLOPs over the simulated iteration)."""
    result = simulate(plan=plan_of(run), dp_options=dp_options_of(run))
    return megatron_flops(run) / (result.iteration_time * run.gpus) / 1e12


def main() -> None:
    print(f"Narayanan et al. SC'21 Table 1 on dgx-a100, a priori. Caveat: {CAVEAT}.")
    print(f"{'model':>7} {'t':>2} {'p':>3} {'v':>2} {'GPUs':>5} {'B':>5} {'b':>3} {'m':>4}  "
          f"{'published':>9} {'predicted':>9} {'error':>7}")
    errors = []
    for run in TABLE_1:
        predicted = predicted_tflops(run)
        error = predicted / run.published_tflops - 1
        errors.append(abs(error))
        print(f"{run.name:>7} {run.tp:>2} {run.pp:>3} {run.chunks:>2} {run.gpus:>5} {run.batch:>5} "
              f"{run.microbatch:>3} {run.num_microbatches:>4}  {run.published_tflops:>9.0f} {predicted:>9.1f} "
              f"{error:>+7.1%}")
    print(f"mean absolute error {sum(errors) / len(errors):.1%}, worst {max(errors):.1%} "
          f"(target: mean <= 10 %, every row within 20 %)")


if __name__ == "__main__":
    main()
