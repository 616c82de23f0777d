"""The engine reproduces stored results bit for bit (times, transfers, memory curves, metrics).

The reference was written by tests/make_sim_reference.py on the engine before its speed work;
any change to a single float here is a change in behaviour, not noise.
"""
import json

from make_sim_reference import CASES, MODES, PATH, result_dict, workload  # noqa: E402  (tests/ is on sys.path)

from simulator import simulate


def test_engine_matches_stored_reference():
    stored = json.loads(PATH.read_text())
    assert len(stored) == len(CASES) * len(MODES) * 2
    for entry in stored:
        name, p, m, v, seed, mode, force = entry["case"]
        got = json.loads(json.dumps(result_dict(simulate(workload(name, p, m, v, seed, mode), force_event_loop=force))))
        for key, want in entry["result"].items():
            # Compared as JSON text: floats to the last bit, and an int stays an int.
            assert json.dumps(got[key]) == json.dumps(want), f"{entry['case']}: {key} differs"


def test_columns_path_matches_general_path():
    """The numpy-column path against the per-op lists it replaced (kept for irregular workloads)."""
    from simulator.engine import _simulate_general

    for seed, (name, p, m, v) in enumerate([("1f1b", 8, 32, 1), ("interleaved", 4, 16, 2), ("zb-v", 4, 12, 2),
                                           ("zb-h2", 6, 18, 1), ("gpipe", 5, 10, 1)]):
        for mode in MODES:
            w = workload(name, p, m, v, 100 + seed, mode)
            for force in (False, True):
                fast = json.loads(json.dumps(result_dict(simulate(w, force_event_loop=force))))
                slow = json.loads(json.dumps(result_dict(_simulate_general(w, force_event_loop=force))))
                assert json.dumps(fast) == json.dumps(slow), (name, mode, force)
