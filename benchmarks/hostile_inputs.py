"""The inputs of ``hostile_sweep.py``'s cases: the case type, the files every case folder holds (a tiny plan
with its model and cluster files, a saved timeline, a validation report, a schedule CSV, a YAML model) and
the helpers that damage a copy of one of them."""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HF = REPO / "tests" / "data" / "hf"
RECORD = REPO / "validation" / "records" / "cpu-gloo-tiny-1f1b-p2.json"

REFUSE, PASS, EITHER = "refuse", "pass", "either"  # what a case must do


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]  # "{t}" is the temp folder
    files: dict = field(default_factory=dict)  # name -> bytes | "fifo" | "chardev" | "devnull-link" | "folder"
    expect: str = EITHER
    outputs: tuple[str, ...] = ()  # names a passing run may create or change (a FIFO's or device's content aside)


TINY_PLAN = {"model": "model.json", "cluster": "cluster.json", "schedule": "1f1b", "pp": 2, "num_microbatches": 4,
             "microbatch_size": 1, "layers_per_stage": [5, 5]}


def js(obj) -> bytes:
    return json.dumps(obj).encode()


def plan_with(**changes) -> bytes:
    plan = dict(TINY_PLAN, **changes)
    return js({k: v for k, v in plan.items() if v is not ...})


def base_files() -> dict[str, bytes]:
    sys.path.insert(0, str(REPO))
    from pipeplan.model import MODEL_PRESETS
    from pipeplan.results import save_simulation
    from simulator.engine import simulate
    from simulator.schedules import build_schedule
    from simulator.workload import uniform_workload

    with tempfile.TemporaryDirectory() as tmp:
        save_simulation(simulate(uniform_workload(build_schedule("1f1b", 2, 2), 1.0, 1.0, 1.0)), f"{tmp}/t.json")
        timeline = Path(f"{tmp}/t.json").read_bytes()
    report = json.loads(RECORD.read_text())
    report["predicted"]["timeline"] = report["measured"]["timeline"]
    return {"plan.json": js(TINY_PLAN), "model.json": js(MODEL_PRESETS["tiny"].to_dict()),
            "cluster.json": (REPO / "validation" / "cpu.json").read_bytes(), "timeline.json": timeline,
            "report.json": js(report), "sched.csv": b"0F0,0B0\n1F0,1B0\n",
            "model.yaml": b"name: y\nnum_layers: 4\nhidden: 64\nheads: 4\nffn_hidden: 256\nvocab: 512\nseq_len: 64\n"}


BASE = base_files()
MODEL = json.loads(BASE["model.json"])
CLUSTER = json.loads(BASE["cluster.json"])
TIMELINE = json.loads(BASE["timeline.json"])
REPORT = json.loads(BASE["report.json"])


def model_with(**changes) -> bytes:
    return js(dict(MODEL, **changes))


def cluster_with(path: str, value) -> bytes:
    doc = json.loads(json.dumps(CLUSTER))
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    node[last] = value
    return js(doc)


def timeline_with(edit) -> bytes:
    doc = json.loads(json.dumps(TIMELINE))
    edit(doc["timeline"])
    return js(doc)


def report_with(edit) -> bytes:
    doc = json.loads(json.dumps(REPORT))
    edit(doc)
    return js(doc)


def op_set(k, col, value):
    def edit(t):
        t["ops"][k][col] = value
    return edit


SCHED = ("schedule", "1f1b", "-p", "2", "-m", "2")
SIM_TINY = ("simulate", "--model", "tiny", "--cluster", "cluster.json")
OPT_TINY = ("optimize", "--model", "tiny", "--cluster", "cluster.json", "--pp", "2", "--time-limit", "20")
HUGE = "9" * 30


