"""The probe's timer runs a steady-state case as a pipeline stage runs its ops (its own prepare right
before each run, untimed repetitions back to back before the timed one) and every other case as before
(all prepared first, one timed run each); the layer benchmark times the forward without its graph that a
recomputing stage runs."""
import torch

from pipeplan.probe.kernels import Case, Timer, run_rounds
from pipeplan.probe.layer import IN_FLIGHT, KINDS, LAYER_SHAPES, NO_GRAD, PASSES, WARM, layer_cases


def _logged(name, log, warm):
    def prepare():
        log.append(f"prepare {name}")
        return name

    def run(state):
        assert state == name  # each run gets the state its own prepare made
        log.append(f"run {name}")
        return torch.zeros(4)

    return Case((0,), 1.0, (), prepare, run, warm)


def test_a_steady_case_is_prepared_before_each_run_and_repeated_back_to_back():
    log = []
    cases = [_logged("cold", log, 0), _logged("steady", log, 2)]
    samples = run_rounds(Timer(torch, torch.device("cpu")), cases, reps=1, seed=0)
    assert [len(s) for s in samples] == [1, 1]  # one timed sample per case and pass
    steady = [e for e in log if e.endswith("steady")]
    assert steady == ["prepare steady", "run steady"] * 3  # two untimed, then the timed one
    first_steady = log.index("prepare steady")
    assert log[first_steady:first_steady + 6] == steady  # nothing else runs in between
    assert log.index("prepare cold") < log.index("run cold")
    assert log.count("run cold") == 1


def test_a_plain_case_is_prepared_before_any_case_runs():
    log = []
    cases = [_logged("a", log, 0), _logged("b", log, 0)]
    run_rounds(Timer(torch, torch.device("cpu")), cases, reps=1, seed=0)
    assert sorted(log[:2]) == ["prepare a", "prepare b"] and sorted(log[2:]) == ["run a", "run b"]


def test_the_layer_benchmark_times_each_pass_and_the_forward_without_graph_in_steady_state():
    shapes = LAYER_SHAPES[:1]
    cases = layer_cases(torch, torch.device("cpu"), torch.float32, shapes)
    got = sorted(tuple(int(x) for x in c.shape) for c in cases)
    # embedding: F, I and the no-graph F (its W runs nothing); block and head: F, I, W and the no-graph F
    want = sorted([(0, 0, p) for p in (0, 1, NO_GRAD)] + [(0, k, p) for k in (1, 2) for p in (*range(len(PASSES)), NO_GRAD)])
    assert got == want and len(KINDS) == 3
    assert all(c.warm == WARM >= 1 and c.size == 1.0 / IN_FLIGHT for c in cases)
    # every case runs: a recomputing stage's block runs under reentrant checkpointing, its output hangs on
    # one checkpoint node with no graph inside (the embedding and the head are not checkpointed)
    for case in cases:
        result = case.run(case.prepare())
        if case.shape[2] == NO_GRAD and KINDS[case.shape[1]] == "block":
            nodes = {type(t.grad_fn).__name__ for t in result if t.grad_fn is not None}
            assert result and nodes == {"CheckpointFunctionBackward"}, nodes
