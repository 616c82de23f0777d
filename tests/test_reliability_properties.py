"""Property: whatever a plan, a model or cluster spec, a schedule CSV, a saved timeline or a validation report
holds, the command line ends with exit 0 and a valid result, or exit 2 and one line on stderr, and nothing else
(no traceback, no other exit code, no output file left by a refused run).

Documents are valid ones with one or two fields replaced by arbitrary JSON (wrong types, NaN, infinities,
negative and zero counts, text, lists, mappings) or deleted; CSVs are rows of action-like and arbitrary cells,
or arbitrary bytes. ``pipeplan.cli.main`` runs in-process (what the subprocess runs, without starting Python
each time); ``test_the_subprocess_keeps_the_same_contract`` runs a few examples as real subprocesses.

Kept out of the strategies, as the "bounds" work owns them: integers above 8 (unbounded work: huge p, m, cells
like ``99999999F0``) and finite floats of extreme size (1e308 giving inf or NaN results).
"""
import io
import json
import math
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from functools import reduce
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from reliability import RECORD, REPO, TINY_PLAN, write_inputs  # tests/ is on sys.path
from test_reliability_tracebacks import simulation_document

DELETE = "<delete>"
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 8), st.floats(-4.0, 64.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 0.5]), st.text(max_size=6),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=6)
action_cells = st.builds(lambda s, k, m: f"{s}{k}{m}", st.integers(0, 3), st.sampled_from("FBIW"), st.integers(0, 3))
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def paths_of(doc, prefix=()):
    """Every place in a JSON document, containers included."""
    yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from paths_of(value, prefix + (key,))


def mutated(doc, changes):
    """``doc`` with each (path, value) applied in turn: the value set there, or the entry deleted."""
    doc = json.loads(json.dumps(doc))
    for path, value in changes:
        if not path:
            doc = value if value != DELETE else {}
            continue
        try:
            parent = reduce(lambda node, key: node[key], path[:-1], doc)
            parent[path[-1]]  # the place still exists after the earlier changes
        except (KeyError, IndexError, TypeError):
            continue
        if value == DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return doc


def value_for(current):
    """Strategy: what replaces ``current``: arbitrary JSON, a deletion, or a value of its own kind (a nearby
    number, an action's text), so some damage leaves a document that still works."""
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        same_kind = st.one_of(st.integers(-1, 4), st.floats(-2.0, 10.0))
    elif isinstance(current, str):
        same_kind = st.one_of(action_cells, st.sampled_from(["1f1b", "gpipe", "tiny", "unit", ""]))
    else:
        same_kind = st.nothing()
    return st.one_of(same_kind, json_values, st.just(DELETE))


def damaged(doc):
    """Strategy: ``doc`` with one or two places replaced (see ``value_for``) or deleted."""
    places = list(paths_of(doc))
    change = st.sampled_from(places).flatmap(
        lambda path: st.tuples(st.just(path), value_for(reduce(lambda node, key: node[key], path, doc))))
    return st.lists(change, min_size=1, max_size=2).map(lambda changes: mutated(doc, changes))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("reliability-properties")
    write_inputs(path)
    return path


def run_main(argv):
    """``pipeplan.cli.main(argv)`` in-process: (exit code, stdout, stderr)."""
    from pipeplan.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's usage errors
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def keeps_contract(command, code, stdout, stderr):
    """Exit 0 with nothing on stderr, or exit 2 with one line ``pipeplan COMMAND: error: ...``."""
    assert "Traceback" not in stderr, stderr
    if code == 0:
        assert stderr == "", stderr
        return True
    assert code == 2, (code, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pipeplan {command}: error: "), stderr
    return False


def valid_simulation(stdout):
    data = json.loads(stdout)
    assert math.isfinite(data["iteration_time"]) and data["iteration_time"] > 0
    assert 0 <= data["bubble_fraction"] < 1
    assert all(math.isfinite(m) and m >= 0 for m in data["peak_memory"])


def write(folder: Path, name: str, doc) -> Path:
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


FULL_PLAN = {**TINY_PLAN, "chunks": 1, "recompute": ["none", "none"], "dp": 1, "tp": 1, "seq_len": 64,
             "sequence_parallel": False, "distributed_optimizer": False, "placement": [0, 1]}


@PROPERTY
@given(damaged(FULL_PLAN))
def test_any_plan(folder, plan):
    path = write(folder, "damaged-plan.json", plan)
    code, stdout, stderr = run_main(["simulate", str(path), "--json"])
    if keeps_contract("simulate", code, stdout, stderr):
        valid_simulation(stdout)


@PROPERTY
@given(st.sampled_from(["model", "cluster"]), st.data())
def test_any_model_or_cluster(folder, which, data):
    base = json.loads((folder / f"{which}.json").read_text())
    path = write(folder, f"damaged-{which}.json", data.draw(damaged(base)))
    specs = {"model": str(folder / "model.json"), "cluster": str(folder / "cluster.json"), which: str(path)}
    code, stdout, stderr = run_main(["simulate", "--model", specs["model"], "--cluster", specs["cluster"],
                                     "--pp", "2", "-m", "2", "--json"])
    if keeps_contract("simulate", code, stdout, stderr):
        valid_simulation(stdout)


cells = st.one_of(action_cells, st.sampled_from(["", " ", "0REDUCE_GRAD", "1UNSHARD", "(0F0;1B0)OVERLAP_F_B", '"0F0"']),
                  st.text(max_size=5))
random_csv_texts = st.lists(st.lists(cells, max_size=6).map(",".join), min_size=1, max_size=4).map("\n".join)


def edited_schedule(name, p, m, edits) -> str:
    """A built-in schedule's CSV with cells dropped, moved or inserted, or rows repeated or emptied."""
    from simulator.ir import to_csv
    from simulator.schedules import build_schedule

    grid = [row.split(",") for row in to_csv(build_schedule(name, p, m)).splitlines()]
    for edit, i, j, cell in edits:
        row = grid[i % len(grid)]
        if edit == "drop" and row:
            row.pop(j % len(row))
        elif edit == "move" and row:
            row.insert(i % (len(row) + 1), row.pop(j % len(row)))
        elif edit == "insert":
            row.insert(j % (len(row) + 1), cell)
        elif edit == "repeat-row":
            grid.insert(j % (len(grid) + 1), list(row))
        elif edit == "empty-row":
            grid.insert(j % (len(grid) + 1), [])
    return "\n".join(",".join(row) for row in grid) + "\n"


schedule_csv_texts = st.builds(
    edited_schedule, st.sampled_from(["gpipe", "1f1b", "zb-h1", "zb-h2", "interleaved", "zb-v"]), st.integers(1, 3),
    st.integers(1, 4), st.lists(st.tuples(st.sampled_from(["drop", "move", "insert", "repeat-row", "empty-row"]),
                                          st.integers(0, 40), st.integers(0, 40), cells), max_size=2))
csv_texts = st.one_of(schedule_csv_texts, random_csv_texts)


@PROPERTY
@given(st.one_of(csv_texts.map(str.encode), st.binary(max_size=48)))
def test_any_schedule_csv(folder, content):
    path = folder / "damaged.csv"
    path.write_bytes(content)
    code, stdout, stderr = run_main(["simulate", "--model", "tiny", "--cluster", str(folder / "cluster.json"),
                                     "--schedule-csv", str(path), "--json"])
    if keeps_contract("simulate", code, stdout, stderr):
        valid_simulation(stdout)


@settings(PROPERTY, max_examples=50)
@given(damaged(simulation_document()))
def test_any_saved_timeline(folder, doc):
    path = write(folder, "damaged-timeline.json", doc)
    chart = folder / "damaged-timeline.png"
    code, stdout, stderr = run_main(["gantt", str(path), "-o", str(chart)])
    if keeps_contract("gantt", code, stdout, stderr):
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        chart.unlink()
    else:
        assert not chart.exists()


REPORT = json.loads(RECORD.read_text())
REPORT["predicted"]["timeline"] = json.loads(json.dumps(REPORT["measured"]["timeline"]))


@PROPERTY
@given(damaged(REPORT))
def test_any_report(folder, report):
    path = write(folder, "damaged-report.json", report)
    code, stdout, stderr = run_main(["compare", str(path)])
    if keeps_contract("compare", code, stdout, stderr):
        assert all(row in stdout for row in ("measured", "predicted (calibrated)", "a priori (cluster spec)"))


@settings(PROPERTY, max_examples=8)
@given(st.one_of(damaged(FULL_PLAN).map(lambda p: ("plan.json", json.dumps(p).encode())),
                 csv_texts.map(lambda t: ("schedule.csv", t.encode())),
                 damaged(simulation_document()).map(lambda d: ("timeline.json", json.dumps(d).encode()))))
def test_the_subprocess_keeps_the_same_contract(folder, named):
    name, content = named
    path = folder / f"subprocess-{name}"
    path.write_bytes(content)
    chart = folder / "subprocess.svg"
    argv = {"plan.json": ["simulate", str(path), "--json"],
            "schedule.csv": ["simulate", "--model", "tiny", "--schedule-csv", str(path), "--json"],
            "timeline.json": ["gantt", str(path), "-o", str(chart)]}[name]
    out = subprocess.run([sys.executable, "-m", "pipeplan", *argv], capture_output=True, text=True, cwd=folder,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    if keeps_contract(argv[0], out.returncode, out.stdout, out.stderr) and argv[0] == "simulate":
        valid_simulation(out.stdout)
    chart.unlink(missing_ok=True)
