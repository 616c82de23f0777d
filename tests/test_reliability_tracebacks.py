"""Bad input is one line naming the field, exit 2, never a traceback: binary and huge-cell CSVs, damaged
saved timelines given to ``gantt`` and reports given to ``compare`` (device out of range, NaN times, zero
devices, wrong types), spec fields of the wrong type, inputs that are folders or nested past the parser,
outputs into a folder, into /proc, or ``figures --out FILE``.

Each case runs the command line (in this process, ``reliability.run_cli``) in the test's temp folder, which
holds afterwards exactly what it held before (no chart drawn from a damaged file, no input touched).
"""
import json

import pytest

from reliability import RECORD, REPO, assert_one_line_error, run_cli, snapshot  # tests/ is on sys.path


def simulation_document() -> dict:
    """A saved simulation as ``simulate --timeline`` writes it, by hand: 1F1B on 2 devices, 1 micro-batch,
    unit times (F 0-1 on device 0, F 1-2 on device 1, B 2-4 on device 1, B 4-6 on device 0)."""
    return {
        "kind": "pipeplan.simulation", "version": 1,
        "timeline": {"num_devices": 2, "meta": {"time_unit": "unit"},
                     "ops": [[0, "0F0", 0.0, 1.0], [1, "1F0", 1.0, 2.0], [1, "1B0", 2.0, 4.0], [0, "0B0", 4.0, 6.0]],
                     "transfers": [[0, 1, "0F0", "1F0", 1.0, 1.0, 0.0], [1, 0, "1B0", "0B0", 4.0, 4.0, 0.0]]},
    }


def damaged_timeline(edit) -> bytes:
    doc = simulation_document()
    edit(doc["timeline"])
    return json.dumps(doc).encode()


def damaged_report(edit) -> bytes:
    report = json.loads(RECORD.read_text())
    report["predicted"]["timeline"] = json.loads(json.dumps(report["measured"]["timeline"]))  # a copy to damage
    edit(report)
    return json.dumps(report).encode()


def set_op(k, column, value):
    def edit(timeline):
        timeline["ops"][k][column] = value
    return edit


CLUSTER = json.loads((REPO / "validation" / "cpu.json").read_text())


def cluster_with(path, value) -> bytes:
    cluster = json.loads(json.dumps(CLUSTER))
    *parents, last = path
    node = cluster
    for key in parents:
        node = node[key]
    node[last] = value
    return json.dumps(cluster).encode()


GANTT = ["gantt", "{in}", "-o", "{tmp}/never.png"]
COMPARE = ["compare", "{in}"]
COMPARE_GANTT = ["compare", "{in}", "--gantt", "{tmp}/never.png"]
SCHEDULE_CSV = ["simulate", "--model", "tiny", "--schedule-csv", "{in}"]
CLUSTER_FILE = ["simulate", "--model", "tiny", "--cluster", "{in}", "--pp", "2", "-m", "2"]

CASES = {
    # schedule CSVs
    "csv-binary": ("in.csv", bytes(range(128, 256)), SCHEDULE_CSV, ["--schedule-csv", "not a text file"]),
    "csv-huge-cell": ("in.csv", b"0F0," + b"x" * 200_000 + b"\n", SCHEDULE_CSV, ["--schedule-csv", "field limit"]),
    "csv-nul": ("in.csv", b"0F0,0B0\n1F0,\x00\n", SCHEDULE_CSV, ["--schedule-csv", "row 2, column 2"]),
    "csv-folder": ("in.csv", None, SCHEDULE_CSV, ["--schedule-csv", "is a folder"]),
    "plan-csv-binary": ("plan.json", json.dumps({
        "model": "tiny", "cluster": "dgx-h100", "schedule": "custom", "schedule_csv": "bin.csv", "pp": 2,
        "num_microbatches": 2, "microbatch_size": 1, "layers_per_stage": [5, 5]}).encode(),
        ["simulate", "{in}"], ["plan.schedule_csv", "not a text file"]),
    # saved timelines given to gantt
    "timeline-device-out-of-range": ("in.json", damaged_timeline(set_op(2, 0, 2)), GANTT,
                                     ["input.timeline.ops[2] device", "0..1"]),
    "timeline-negative-device": ("in.json", damaged_timeline(set_op(0, 0, -1)), GANTT, ["input.timeline.ops[0] device"]),
    "timeline-device-as-text": ("in.json", damaged_timeline(set_op(0, 0, "0")), GANTT, ["input.timeline.ops[0] device"]),
    "timeline-nan-time": ("in.json", damaged_timeline(set_op(1, 2, float("nan"))), GANTT,
                          ["input.timeline.ops[1] start", "finite"]),
    "timeline-infinite-end": ("in.json", damaged_timeline(set_op(3, 3, float("inf"))), GANTT,
                              ["input.timeline.ops[3] end", "finite"]),
    "timeline-huge-integer-time": ("in.json", damaged_timeline(set_op(0, 3, 10 ** 400)), GANTT,
                                   ["input.timeline.ops[0] end", "finite"]),
    "timeline-ends-before-start": ("in.json", damaged_timeline(set_op(0, 3, -1.0)), GANTT,
                                   ["input.timeline.ops[0]", "before it starts"]),
    "timeline-zero-devices": ("in.json", damaged_timeline(lambda t: t.update(num_devices=0)), GANTT,
                              ["input.timeline.num_devices", ">= 1"]),
    "timeline-a-trillion-devices": ("in.json", damaged_timeline(lambda t: t.update(num_devices=10 ** 12)), GANTT,
                                    ["input.timeline.num_devices", "1,000,000,000,000 GPUs", "131,072"]),
    "timeline-devices-true": ("in.json", damaged_timeline(lambda t: t.update(num_devices=True)), GANTT,
                              ["input.timeline.num_devices"]),
    "timeline-action-number": ("in.json", damaged_timeline(set_op(0, 1, 5)), GANTT, ["input.timeline.ops[0] action"]),
    "timeline-action-unknown": ("in.json", damaged_timeline(set_op(0, 1, "0X0")), GANTT,
                                ["input.timeline.ops[0] action", "'0X0'"]),
    "timeline-short-row": ("in.json", damaged_timeline(lambda t: t["ops"][1].pop()), GANTT,
                           ["input.timeline.ops[1]", "device, action, start, end"]),
    "timeline-ops-not-a-list": ("in.json", damaged_timeline(lambda t: t.update(ops={"0": 1})), GANTT,
                                ["input.timeline.ops", "list"]),
    "timeline-transfer-out-of-range": ("in.json", damaged_timeline(lambda t: t["transfers"][0].__setitem__(1, 7)),
                                       GANTT, ["input.timeline.transfers[0] dst"]),
    "timeline-meta-list": ("in.json", damaged_timeline(lambda t: t.update(meta=[1])), GANTT,
                           ["input.timeline.meta", "mapping"]),
    "timeline-missing": ("in.json", json.dumps({"kind": "pipeplan.simulation"}).encode(), GANTT, ["input.timeline"]),
    # validation reports given to compare
    "report-nan-iteration": ("in.json", damaged_report(lambda r: r["measured"].update(iteration_time=float("nan"))),
                             COMPARE, ["report.measured.iteration_time", "finite"]),
    "report-busy-text": ("in.json", damaged_report(lambda r: r["apriori"].update(busy_time="fast")), COMPARE,
                         ["report.apriori.busy_time", "list"]),
    "report-run-missing-field": ("in.json", damaged_report(lambda r: r["run"].pop("world_size")), COMPARE,
                                 ["report.run.world_size"]),
    "report-model-list": ("in.json", damaged_report(lambda r: r["plan"].update(model=[1])), COMPARE,
                          ["report.plan.model"]),
    "report-error-null": ("in.json", damaged_report(lambda r: r["errors"]["predicted"].update(bubble_points=None)),
                          COMPARE, ["report.errors.predicted.bubble_points"]),
    "report-timeline-device-out-of-range": ("in.json", damaged_report(
        lambda r: r["predicted"]["timeline"]["ops"][0].__setitem__(0, 9)), COMPARE_GANTT,
        ["report.predicted.timeline.ops[0] device"]),
    "report-timeline-zero-devices": ("in.json", damaged_report(
        lambda r: r["measured"].update(timeline=dict(r["measured"]["timeline"], num_devices=0))), COMPARE_GANTT,
        ["report.measured.timeline.num_devices"]),
    # CP-SAT workers past the C int a solver takes (an OverflowError traceback before)
    "search-workers-huge": ("unused", b"", ["schedule", "search", "-p", "2", "-m", "2", "--workers", "9" * 30],
                            ["argument --workers", "at most 256"]),
    # spec fields of the wrong type
    "cluster-name-list": ("c.json", cluster_with(["name"], [1]), CLUSTER_FILE, ["cluster.name"]),
    "cluster-gpu-name-mapping": ("c.json", cluster_with(["gpu", "name"], {"a": 1}), CLUSTER_FILE, ["cluster.gpu.name"]),
    "cluster-max-fraction-text": ("c.json", cluster_with(["gpu", "max_fraction"], "most"), CLUSTER_FILE,
                                  ["cluster.gpu.max_fraction"]),
    "cluster-base-list": ("c.json", json.dumps({"base": ["dgx-h100"]}).encode(), CLUSTER_FILE, ["cluster.base"]),
    "cluster-link-name-number": ("c.json", cluster_with(["intra", "name"], 5), CLUSTER_FILE, ["cluster.intra.name"]),
    "model-key-carriage-return": ("m.json", json.dumps({"\r\nname": 1}).encode(), ["simulate", "--model", "{in}"],
                                  ["model.\\r\\nname: unknown field"]),  # found by the property test
    "cluster-name-lone-surrogate": ("c.json", cluster_with(["name"], "\ud800"), CLUSTER_FILE,
                                    ["cluster.name", "printable"]),
    # outputs that cannot be written (every writing flag: test_reliability_outputs.py)
    "output-a-folder": ("out.csv", None, ["schedule", "1f1b", "-p", "2", "-m", "2", "--csv", "{in}"],
                        ["--csv", "is a folder"]),
    "output-in-proc": ("unused", b"", ["schedule", "1f1b", "-p", "2", "-m", "2", "--csv", "/proc/pipeplan-test.csv"],
                       ["--csv", "inside /proc"]),
    "figures-out-a-file": ("in.json", b"{}", ["figures", "--out", "{in}"], ["--out", "not a folder"]),
    # inputs that are not files the parser can take
    "plan-is-a-folder": ("in.json", None, ["simulate", "{in}"], ["plan", "is a folder"]),
    "gantt-input-is-a-folder": ("in.json", None, GANTT, ["input", "is a folder"]),
    "plan-nested-too-deeply": ("in.json", b"[" * 100_000, ["simulate", "{in}"], ["plan", "nested too deeply"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_field(tmp_path, case):
    name, content, argv, needles = CASES[case]
    target = tmp_path / name
    if content is None:
        target.mkdir()
    else:
        target.write_bytes(content)
    (tmp_path / "bin.csv").write_bytes(bytes(range(128, 256)))  # the CSV a plan case names
    before = snapshot(tmp_path)
    out = run_cli(*[a.format(tmp=tmp_path, **{"in": target}) for a in argv])
    assert_one_line_error(out, argv[0], *needles)
    assert snapshot(tmp_path) == before


def test_the_hand_made_simulation_document_draws():
    """The document the damaged cases start from is itself valid: the failures above are the damage's."""
    from pipeplan.documents import checked_timeline
    from simulator.timeline import bubble_fraction, iteration_time

    timeline = checked_timeline(simulation_document()["timeline"], "input.timeline")
    # 2 devices x 6 time units, 6 busy: half idle.
    assert iteration_time(timeline) == 6 and bubble_fraction(timeline) == 0.5


def test_every_recorded_report_passes_the_report_checks():
    from pipeplan.validation import load_report

    for record in sorted((REPO / "validation" / "records").glob("*.json")):
        assert load_report(str(record))["kind"] == "pipeplan.validation"
