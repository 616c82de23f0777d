"""Predict Korthikanti et al. 2022's runs a priori and compare: selective recomputation + sequence parallelism.

"Reducing Activation Recomputation in Large Transformer Models" (arXiv 2205.05198): GPT models on DGX
A100 80 GB nodes, vocabulary 51,200, sequence 2048, FFN 4h, t = 8, data-parallel size one. The
published figures are the Megatron-LM README's table for these runs (commit 2e90a342f5, May 2022,
"see our paper for a description of how these are calculated ... measured using a data parallel
size of one"): model FLOPs utilization (MFU, no recomputation counted) and hardware FLOPs
utilization (HFU, the recomputed work counted) of the paper's "present work", selective
recomputation with sequence parallelism.

Source status: MFU and HFU are verbatim from that README. The configurations (layers, hidden,
heads, pipeline size, GPUs, global batch, micro-batch) are the paper's Table 3 as recalled, not found
verbatim in a stored copy of the paper: GPUs = 8·p, global batch 4 (22B) and = GPUs (175B, 530B, 1T),
micro-batch 1. Model FLOPs over (MFU x GPUs x 312 TFLOP/s) then gives 1.10 s, 13.75 s, 37.8 s and
71.5 s, which match the iteration times recalled from the paper's Table 5 (also not verified).

Every row is simulated with the ``dgx-a100`` preset; nothing is fitted. Plans: 1F1B, Megatron's even
split (embedding on the first stage, LM head on the last), ``sequence_parallel``, selective
recomputation on every stage, standard (non-Flash) attention with dropout, ``blocking_p2p`` (Megatron
of 2022 still waited for each batch_isend_irecv).

Run: python benchmarks/published_runs_2022.py
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeplan import simulate  # noqa: E402
from pipeplan.model import ModelSpec  # noqa: E402
from pipeplan.plan import Plan  # noqa: E402

VOCAB, SEQ, TP = 51200, 2048, 8
A100_PEAK = 312e12  # dense fp16/bf16 tensor-core FLOP/s, the peak MFU and HFU divide by


@dataclass(frozen=True)
class Run:
    """One run of Korthikanti et al. 2022 (t = 8, dp = 1) and its published MFU and HFU."""

    name: str
    layers: int
    hidden: int
    heads: int
    pp: int
    batch: int
    published_mfu: float
    published_hfu: float
    microbatch: int = 1

    @property
    def gpus(self) -> int:
        return TP * self.pp

    @property
    def num_microbatches(self) -> int:
        return self.batch // self.microbatch


TABLE = (
    Run("22B", 48, 6144, 64, 1, 4, 0.415, 0.437),
    Run("175B", 96, 12288, 96, 8, 64, 0.514, 0.528),
    Run("530B", 105, 20480, 128, 35, 280, 0.560, 0.570),
    Run("1T", 128, 25600, 160, 64, 512, 0.563, 0.570),
)


def model_of(run: Run) -> ModelSpec:
    return ModelSpec(f"gpt-{run.name}", run.layers, run.hidden, run.heads, 4 * run.hidden, VOCAB, SEQ,
                     dropout=True, learned_positions=True, attention="standard")


def plan_of(run: Run) -> Plan:
    """Megatron's layout: l / p blocks per stage, the embedding first and the LM head last."""
    per_stage = run.layers // run.pp
    if per_stage * run.pp != run.layers:
        raise ValueError(f"{run.name}: {run.layers} blocks do not split evenly over {run.pp} stages")
    layers = [per_stage] * run.pp
    layers[0] += 1
    layers[-1] += 1
    return Plan(model=model_of(run).to_dict(), cluster="dgx-a100", schedule="1f1b", pp=run.pp,
                num_microbatches=run.num_microbatches, microbatch_size=run.microbatch,
                layers_per_stage=tuple(layers), recompute=("selective",) * run.pp, nodes=run.gpus // 8,
                dp=1, tp=TP, sequence_parallel=True, blocking_p2p=True)


def model_flops(run: Run) -> float:
    """Model FLOPs of one iteration, no recomputation: 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h))
    (Korthikanti et al. 2022, Sec. 6.3; Narayanan et al.'s eq. 3 with three passes instead of four)."""
    l, h, s, v = run.layers, run.hidden, SEQ, VOCAB
    return 72 * run.batch * s * l * h * h * (1 + s / (6 * h) + v / (12 * l * h))


def predicted_mfu(run: Run) -> float:
    """The MFU the simulator predicts for ``run``: model FLOPs over (iteration time x GPUs x peak)."""
    result = simulate(plan=plan_of(run))
    return model_flops(run) / (result.iteration_time * run.gpus * A100_PEAK)


def main() -> None:
    print("Korthikanti et al. 2022 (selective recomputation + sequence parallelism, t=8, dp=1) on dgx-a100, "
          "a priori")
    print(f"{'model':>5} {'p':>3} {'GPUs':>5} {'B':>4}  {'published MFU':>13} {'predicted':>9} {'error':>7}  "
          f"{'time s':>6}")
    errors = []
    for run in TABLE:
        mfu = predicted_mfu(run)
        error = mfu / run.published_mfu - 1
        errors.append(abs(error))
        seconds = model_flops(run) / (mfu * run.gpus * A100_PEAK)
        print(f"{run.name:>5} {run.pp:>3} {run.gpus:>5} {run.batch:>4}  {run.published_mfu:>13.1%} {mfu:>9.1%} "
              f"{error:>+7.1%}  {seconds:>6.2f}")
    print(f"mean absolute error {sum(errors) / len(errors):.1%}, worst {max(errors):.1%} "
          f"(target: every row within 20 %)")


if __name__ == "__main__":
    main()
