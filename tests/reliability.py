"""What every run of the command line keeps, for the reliability tests: exit 0, or exit 2 with one line on
stderr that starts ``pipeplan COMMAND: error: FIELD``; never a traceback; and the folder it ran in holds
what it held before (every input byte for byte, no new file, no file turned into another kind)."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from inprocess import REPO, run_pipeplan  # tests/ is on sys.path

TINY_PLAN = {"model": "model.json", "cluster": "cluster.json", "schedule": "1f1b", "pp": 2, "num_microbatches": 4,
             "microbatch_size": 1, "layers_per_stage": [5, 5]}
RECORD = REPO / "validation" / "records" / "cpu-gloo-tiny-1f1b-p2.json"


def snapshot(folder) -> dict:
    """Every entry under ``folder``: a regular file's bytes, a symlink's target, a folder's or special file's
    file type (os.lstat: links are not followed)."""
    entries = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                entries[os.path.relpath(path, folder)] = ("symlink", os.readlink(path))
            elif stat.S_ISREG(mode):
                entries[os.path.relpath(path, folder)] = Path(path).read_bytes()
            else:
                entries[os.path.relpath(path, folder)] = ("type", stat.S_IFMT(mode))
    return entries


def assert_one_line_error(out, command: str, *needles: str) -> str:
    """Exit 2, one line on stderr, no traceback, the line names each of ``needles``; returns the line."""
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"pipeplan {command}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_cli(*args, cwd=None):
    """``pipeplan ARGS`` in ``cwd`` (the repository by default), run in this process as a subprocess would run it
    (``inprocess.run_pipeplan``: hundreds of cases here, each a second of interpreter start and import saved)."""
    return run_pipeplan(*args, cwd=cwd or REPO)


def _unchanged(cwd, run):
    """``run()``'s result; asserts the folder's files are unchanged byte for byte after it, nothing new."""
    before = {p.name: p.read_bytes() for p in Path(cwd).iterdir()}
    out = run()
    assert {p.name: p.read_bytes() for p in Path(cwd).iterdir()} == before
    return out


def run_in(cwd, *args, env=None):
    """``pipeplan ARGS`` as a subprocess in ``cwd`` (60 s at most, so work that should have been refused fails
    instead of hanging); asserts the folder's files are unchanged byte for byte after it, nothing new."""
    return _unchanged(cwd, lambda: subprocess.run(
        [sys.executable, "-m", "pipeplan", *args], capture_output=True, text=True, cwd=cwd, timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(env or {})}))


def run_here(cwd, *args, env=None):
    """``run_in`` run in this process as the subprocess would run it (``inprocess.run_pipeplan``), for the
    tests that check hundreds of command lines."""
    return _unchanged(cwd, lambda: run_pipeplan(*args, cwd=cwd, env=env, timeout=60))


def refused_in_one_line(out, *words) -> str:
    """Exit 2, one line on stderr starting with the command, holding ``words``, nothing on stdout."""
    assert out.returncode == 2, (out.stdout[-500:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pipeplan "), out.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def write_inputs(folder: Path) -> dict[str, Path]:
    """The inputs the commands read, in ``folder``: a plan naming a model and a cluster file beside it, the
    model and cluster, a saved simulation, and a validation report that keeps both timelines."""
    from pipeplan.model import MODEL_PRESETS
    from pipeplan.results import save_simulation
    from simulator.engine import simulate
    from simulator.schedules import build_schedule
    from simulator.workload import uniform_workload

    files = {name: folder / name for name in ("plan.json", "model.json", "cluster.json", "timeline.json", "report.json")}
    files["plan.json"].write_text(json.dumps(TINY_PLAN))
    files["model.json"].write_text(json.dumps(MODEL_PRESETS["tiny"].to_dict()))
    files["cluster.json"].write_bytes((REPO / "validation" / "cpu.json").read_bytes())
    save_simulation(simulate(uniform_workload(build_schedule("1f1b", 2, 2), 1.0, 1.0, 1.0)), str(files["timeline.json"]))
    report = json.loads(RECORD.read_text())
    report["predicted"]["timeline"] = report["measured"]["timeline"]
    files["report.json"].write_text(json.dumps(report))
    return files
