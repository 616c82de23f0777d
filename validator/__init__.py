"""Real execution of a pipeplan plan with torch.distributed: one rank per GPU of the plan (tp·pp·dp)
runs its pipeline device's action list from the shared schedule IR, times every op, calibrates, and
sends its measurements to rank 0, which assembles them (timelines and a profile, ``pipeplan.validation.Measurements``).

Start it with torchrun (``python -m torch.distributed.run ... -m validator PLAN.json``) or through
``pipeplan validate``. Importing this package does not import torch; its modules do.

* ``__main__`` — one rank's entry: options, failure notes for the launcher, rank 0's outputs;
* ``run``      — set-up (plan, cores, device, process group) and the measured iterations;
* ``calibrate``, ``timing`` — op and link costs, clocks, other processes' load;
* ``runtime``, ``compute``, ``modules`` — transfers, the action-list executor, the stages' ops;
* ``placement``, ``tensor_parallel``, ``data_parallel`` — 3D plans: where a rank sits and its groups,
  Megatron's tensor-parallel layers, the gradient reduction and optimizer step ending each iteration;
* ``gather``   — rank 0: the ranks' payloads as one ``Measurements``;
* ``serving_run``, ``serving_compute``, ``serving_modules`` — a serving plan: its passes with a KV cache.
"""
