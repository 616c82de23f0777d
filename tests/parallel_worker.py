"""Helper of tests/test_validator_parallel.py (not a test): two gloo ranks on this host run the tiny model's
stages with tensor parallelism (t = 2), without and with sequence parallelism (the latter also cut into two
pipeline stages), and with data parallelism (d = 2), and save what they computed; then four ranks run
t = 2 with sequence parallelism x d = 2 with the distributed optimizer.

    python tests/parallel_worker.py OUT_FOLDER

Each of the two ranks writes OUT_FOLDER/rank{r}.pt: the tensor-parallel stage's losses, gradients and
collective counts per kind after each op ("tp", "sp", and "sp_positions" with learned positions), the
two-stage sequence-parallel run's losses, boundary tensors and gradients ("sp_pp2"), and the data-parallel
run's weights before and after one iteration with the kinds of the ops it timed, with plain data
parallelism ("dp") and the distributed optimizer ("zero"). Each of the four writes
OUT_FOLDER/sp-dp-rank{r}.pt, its weights before and after one iteration.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH, SEQ, MICROBATCHES, SEED, LR = 2, 16, 2, 1234, 0.5


def tiny(learned_positions: bool = False):
    """The tiny preset, or the same with GPT-2-style learned positions."""
    import dataclasses

    from pipeplan.model import load_model

    return dataclasses.replace(load_model("tiny"), learned_positions=learned_positions)


def tensor_parallel(rank: int, group, sequence_parallel: bool = False, learned_positions: bool = False) -> dict:
    from validator.compute import StageRunner
    from validator.tensor_parallel import TensorGroup

    model = tiny(learned_positions)
    tensor = TensorGroup(2, rank, group, sequence_parallel)
    runner = StageRunner(model, 0, range(model.num_pipeline_layers), BATCH, SEQ, MICROBATCHES,
                         torch.device("cpu"), torch.float32, SEED, tensor=tensor)
    calls, elements = [], []

    def snapshot():
        calls.append(dict(tensor.calls))
        elements.append(dict(tensor.elements))

    runner.forward(0, None)
    snapshot()
    runner.backward(0, None, split=False)
    snapshot()
    runner.forward(1, None)
    runner.backward(1, None, split=True)  # I, then W: the split backward's collectives are all in I
    snapshot()
    runner.weight(1)
    snapshot()
    grads = {n: p.grad.clone() for n, p in runner.module.named_parameters()}
    return {"losses": [float(x) for x in runner.losses], "grads": grads, "calls": calls, "elements": elements}


def sequence_parallel_pipeline(rank: int, group) -> dict:
    """Layers 0-4 and 5-9 as two stages on this tensor rank, the boundary tensors handed over by hand."""
    from pipeplan.model import load_model
    from validator.compute import StageRunner
    from validator.tensor_parallel import TensorGroup

    model = load_model("tiny")
    tensor = TensorGroup(2, rank, group, sequence_parallel=True)
    first, last = (StageRunner(model, s, layers, BATCH, SEQ, MICROBATCHES, torch.device("cpu"), torch.float32,
                               SEED, tensor=tensor) for s, layers in ((0, range(0, 5)), (1, range(5, 10))))
    sent, returned = [], []
    for mb in range(MICROBATCHES):
        sent.append(first.forward(mb, None))
        last.forward(mb, sent[-1].clone())
        returned.append(last.backward(mb, None, split=False))
        first.backward(mb, returned[-1].clone(), split=False)
    grads = {f"{s}.{n}": p.grad.clone() for s, runner in enumerate((first, last))
             for n, p in runner.module.named_parameters()}
    return {"losses": [float(x) for x in last.losses], "sent": sent, "returned": returned, "grads": grads}


def data_parallel(rank: int, group, distributed: bool = False, tensor=None) -> dict:
    """One 1F1B iteration of data rank ``rank`` (of 2) over ``group``, tensor-parallel with ``tensor``."""
    from pipeplan.lowering import generated_schedule
    from pipeplan.model import load_model
    from validator.compute import StageRunner
    from validator.data_parallel import TrainingStep
    from validator.runtime import RankExecutor
    from validator.timing import CpuClock

    model = load_model("tiny")
    schedule = generated_schedule("1f1b", 1, MICROBATCHES, 1)
    runner = StageRunner(model, 0, range(model.num_pipeline_layers), BATCH, SEQ, MICROBATCHES,
                         torch.device("cpu"), torch.float32, SEED, lr=LR, data_ranks=2, data_rank=rank,
                         **({"tensor": tensor} if tensor is not None else {}))
    before = {n: p.detach().clone() for n, p in runner.module.named_parameters()}
    clock = CpuClock()
    step = TrainingStep(schedule, 0, {0: runner}, clock, group, 2, overlap=True, timeout=60,
                        distributed=distributed, data_rank=rank)
    marks, _ = RankExecutor(schedule, 0, {0: runner}, {}, clock, None, step).run_iteration()
    after = {n: p.detach().clone() for n, p in runner.module.named_parameters()}
    return {"before": before, "after": after, "ops": [str(m.action) for m in marks]}


def run(rank: int, init: str, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    group = dist.new_group([0, 1])
    result = {"tp": tensor_parallel(rank, group), "sp": tensor_parallel(rank, group, sequence_parallel=True),
              "sp_positions": tensor_parallel(rank, group, sequence_parallel=True, learned_positions=True),
              "sp_pp2": sequence_parallel_pipeline(rank, group), "dp": data_parallel(rank, group),
              "zero": data_parallel(rank, group, distributed=True)}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def run_3d(rank: int, init: str, out: str) -> None:
    """Four ranks, tp = 2 with sequence parallelism x dp = 2 with the distributed optimizer, in Megatron's
    order (tensor rank r % 2, data rank r // 2); writes OUT_FOLDER/sp-dp-rank{r}.pt."""
    from validator.tensor_parallel import TensorGroup

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=4)
    tensor_groups = [dist.new_group([2 * d, 2 * d + 1]) for d in range(2)]
    data_groups = [dist.new_group([t, t + 2]) for t in range(2)]
    tensor = TensorGroup(2, rank % 2, tensor_groups[rank // 2], sequence_parallel=True)
    result = data_parallel(rank // 2, data_groups[rank % 2], distributed=True, tensor=tensor)
    torch.save(result, Path(out) / f"sp-dp-rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    folder = sys.argv[1]
    mp.spawn(run, (os.path.join(tempfile.mkdtemp(dir=folder), "init"), folder), nprocs=2)
    mp.spawn(run_3d, (os.path.join(tempfile.mkdtemp(dir=folder), "init"), folder), nprocs=4)
