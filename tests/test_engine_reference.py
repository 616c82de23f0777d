"""The engine reproduces stored results bit for bit (times, transfers, memory curves, metrics).

The reference was written by tests/make_sim_reference.py on the engine before its speed work;
any change to a single float here is a change in behaviour, not noise. One exception, by design:
where transfers contend, the default path runs the event loop only from the first contended
instant on the exact pass's state, so its times agree with the stored full-loop ones to rounding
(1e-12 relative), and the transfers it already had come first in its list.
"""
import json
import math
import sys

from make_sim_reference import CASES, MODES, PATH, result_dict, workload  # noqa: E402  (tests/ is on sys.path)

from simulator import simulate
from simulator.compile import compile_workload
from simulator.passes import first_contention, uncontended_times


def contends(w) -> bool:
    compiled = compile_workload(w)
    return first_contention(compiled, *uncontended_times(compiled)) is not None


def assert_close(got, want, where: str) -> None:
    """Same structure and non-float values; floats within 1e-12 relative."""
    if isinstance(want, float) or isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12), where
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for g, w in zip(got, want):
            assert_close(g, w, where)
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    else:
        assert got == want, where


def test_engine_matches_stored_reference():
    stored = json.loads(PATH.read_text())
    assert len(stored) == len(CASES) * len(MODES) * 2
    for entry in stored:
        name, p, m, v, seed, mode, force = entry["case"]
        w = workload(name, p, m, v, seed, mode)
        got = json.loads(json.dumps(result_dict(simulate(w, force_event_loop=force))))
        if not force and contends(w):
            want = entry["result"]
            for part in (got, want):
                part["timeline"]["transfers"].sort(key=lambda t: (t[2], t[3]))
            assert_close(got, want, str(entry["case"]))
            continue
        for key, want in entry["result"].items():
            if key == "bubble_fraction" and sys.version_info >= (3, 12):
                # sum() of floats is compensated from Python 3.12 on, and the engine sums busy
                # times with it; the reference was stored with 3.11's left-to-right sum().
                assert math.isclose(got[key], want, rel_tol=1e-12, abs_tol=1e-15), f"{entry['case']}: {key}"
                continue
            # Compared as JSON text: floats to the last bit, and an int stays an int.
            assert json.dumps(got[key]) == json.dumps(want), f"{entry['case']}: {key} differs"


def test_engine_matches_the_plain_oracle():
    """The engine against tests/engine_oracle.py, a slow re-implementation sharing only the rules."""
    from engine_oracle import oracle_times

    for seed, (name, p, m, v) in enumerate([("1f1b", 4, 8, 1), ("interleaved", 3, 6, 2), ("zb-v", 3, 6, 2),
                                           ("zb-h2", 4, 8, 1), ("gpipe", 3, 5, 1)]):
        for mode in MODES:
            w = workload(name, p, m, v, 100 + seed, mode)
            times, transfers = oracle_times(w)
            for force in (False, True):
                result = simulate(w, force_event_loop=force)
                for op in result.timeline.ops:
                    start, end = times[op.action]
                    assert math.isclose(op.start, start, rel_tol=1e-9, abs_tol=1e-9), (name, mode, op)
                    assert math.isclose(op.end, end, rel_tol=1e-9, abs_tol=1e-9), (name, mode, op)
                got = sorted((t.src, t.dst, str(t.action), str(t.consumer), t.start, t.end)
                             for t in result.timeline.transfers)
                assert len(got) == len(transfers), (name, mode, force)
                for a, b in zip(got, transfers):
                    assert a[:4] == b[:4] and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
                                                  for x, y in zip(a[4:], b[4:])), (name, mode, a, b)


def test_memory_columns_match_memory_replay_on_any_order():
    """The column replay against memory_curves / peak_live_microbatches on ops whose times are not
    in device order (which the engine never produces), so the sorting branch is exercised too."""
    import random

    import numpy as np

    from simulator import OpRecord, Timeline
    from simulator.memory import memory_curves, memory_curves_columns, peak_live_microbatches

    rng = random.Random(7)
    w = workload("zb-v", 3, 6, 2, 5, "ports")
    schedule = w.schedule
    from simulator.kinds import KINDS

    code = {name: rule.code for name, rule in KINDS.items()}
    for trial in range(20):
        ops, bounds = [], [0]
        for d, acts in enumerate(schedule.device_actions):
            for a in acts:
                s = float(rng.randint(0, 6)) if trial % 2 else rng.uniform(0, 6)
                ops.append(OpRecord(d, a, s, s + rng.choice([0.0, 1.0, rng.uniform(0, 2)])))
            bounds.append(len(ops))
        timeline = Timeline(schedule.num_devices, ops)
        static = [rng.uniform(0, 9) for _ in range(schedule.num_devices)]
        curves, live = memory_curves_columns(
            np.array([o.device for o in ops]), np.array([o.action.stage for o in ops]),
            np.array([code[o.action.kind] for o in ops]), np.array([o.start for o in ops]),
            np.array([o.end for o in ops]), bounds, w.stages, static)
        assert json.dumps(curves) == json.dumps(memory_curves(timeline, w.stages, static))
        assert live == peak_live_microbatches(timeline)


def test_memory_columns_merge_two_ordered_streams_as_the_replay_sorts_them():
    """Each device's ops as two runs each in time order (its compute and communication streams, as the
    engine lays them out): the merge by binary search orders them as memory_curves' sort does, ties
    (integer times, zero-length ops) included."""
    import random

    import numpy as np

    from simulator import OpRecord, Timeline
    from simulator.kinds import KINDS
    from simulator.memory import memory_curves, memory_curves_columns, peak_live_microbatches

    rng = random.Random(11)
    w = workload("zb-v", 3, 6, 2, 5, "ports")
    code = {name: rule.code for name, rule in KINDS.items()}
    for trial in range(30):
        ops, bounds, splits = [], [0], []
        for d, acts in enumerate(w.schedule.device_actions):
            cut = rng.randint(0, len(acts))
            for run in (acts[:cut], acts[cut:]):
                t = 0.0
                for a in run:
                    t += float(rng.randint(0, 2)) if trial % 2 else rng.uniform(0, 1)
                    length = rng.choice([0.0, 1.0]) if trial % 2 else rng.uniform(0, 2)
                    ops.append(OpRecord(d, a, t, t + length))
                    t += length
                if run is acts[:cut]:
                    splits.append(len(ops))
            bounds.append(len(ops))
        static = [rng.uniform(0, 9) for _ in range(w.schedule.num_devices)]
        curves, live = memory_curves_columns(
            np.array([o.device for o in ops]), np.array([o.action.stage for o in ops]),
            np.array([code[o.action.kind] for o in ops]), np.array([o.start for o in ops]),
            np.array([o.end for o in ops]), bounds, w.stages, static, splits=splits)
        timeline = Timeline(w.schedule.num_devices, ops)
        assert json.dumps(curves) == json.dumps(memory_curves(timeline, w.stages, static))
        assert live == peak_live_microbatches(timeline)
