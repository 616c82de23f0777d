"""The cases of ``hostile_sweep.py``, one subcommand after another: each is a command line, the files its
folder holds beyond the usual inputs, what it must do (refuse, pass, either) and the outputs it may write."""
from __future__ import annotations

import json

from hostile_inputs import (BASE, CLUSTER, EITHER, HF, HUGE, MODEL, OPT_TINY, PASS, REFUSE, REPORT, SCHED, SIM_TINY,
                            Case, cluster_with, js, model_with, op_set, plan_with, report_with, timeline_with)


def cases() -> list[Case]:
    c: list[Case] = []
    add = lambda *a, **k: c.append(Case(*a, **k))  # noqa: E731

    # ---- schedule: numbers
    add("sched-ok", SCHED, expect=PASS)
    add("sched-json", SCHED + ("--json",), expect=PASS)
    for flag, value in [("-p", "0"), ("-p", "-1"), ("-p", HUGE), ("-p", "1e20"), ("-p", "2.5"), ("-p", "nan"),
                        ("-p", "inf"), ("-p", "two"), ("-p", ""), ("-m", "0"), ("-m", "-3"), ("-m", "1e20"),
                        ("-m", HUGE), ("-m", "nan"), ("-m", "0x10")]:
        args = list(SCHED)
        args[args.index(flag) + 1] = value
        add(f"sched{flag}={value[:8]}", tuple(args), expect=REFUSE)
    for flag in ("--f", "--b", "--w", "--comm", "--overlap"):
        for value in ("nan", "inf", "-1", "1e308", "1e-300", "-0"):
            expect = PASS if value == "-0" and flag == "--comm" else REFUSE if value != "-0" else EITHER
            add(f"sched{flag}={value}", SCHED + (flag, value), expect=expect)
    add("sched-chunks0", ("schedule", "interleaved", "-p", "2", "-m", "4", "--chunks", "0"), expect=REFUSE)
    add("sched-chunks-huge", ("schedule", "interleaved", "-p", "2", "-m", "4", "--chunks", HUGE), expect=REFUSE)
    add("sched-zbv-chunks3", ("schedule", "zb-v", "-p", "2", "-m", "4", "--chunks", "3"), expect=REFUSE)
    add("sched-unknown-name", ("schedule", "nope", "-p", "2", "-m", "2"), expect=REFUSE)
    add("sched-iter0", SCHED + ("--iterations", "0"), expect=REFUSE)
    add("sched-iter-huge", SCHED + ("--iterations", "100000000"), expect=REFUSE)
    add("sched-p512-m16384", ("schedule", "1f1b", "-p", "512", "-m", "16384"), expect=REFUSE)
    add("sched-p16384-m1", ("schedule", "1f1b", "-p", "16384", "-m", "1"), expect=PASS)
    add("sched-dualpipe-overlap", ("schedule", "dualpipe-v", "-p", "2", "-m", "4", "--overlap", "1.5"), expect=PASS)
    # ---- schedule: outputs
    add("sched-csv-new", SCHED + ("--csv", "out.csv"), expect=PASS, outputs=("out.csv",))
    add("sched-csv-devnull-link", SCHED + ("--csv", "null"), {"null": "devnull-link"}, expect=PASS)
    add("sched-csv-chardev", SCHED + ("--csv", "dev"), {"dev": "chardev"}, expect=PASS)
    add("sched-csv-fifo-no-reader", SCHED + ("--csv", "fifo"), {"fifo": "fifo"})
    add("sched-csv-folder", SCHED + ("--csv", "dir"), {"dir": "folder"}, expect=REFUSE)
    add("sched-csv-missing-folder", SCHED + ("--csv", "no/such/out.csv"), expect=REFUSE)
    add("sched-csv-proc", SCHED + ("--csv", "/proc/self/comm"), expect=REFUSE)
    add("sched-csv-sys", SCHED + ("--csv", "/sys/kernel/x.csv"), expect=REFUSE)
    add("sched-csv-trailing-slash", SCHED + ("--csv", "out.csv/"), expect=REFUSE)
    add("sched-csv-empty-name", SCHED + ("--csv", ""), expect=REFUSE)
    add("sched-two-outputs", SCHED + ("--csv", "o.json", "--timeline", "o.json"), expect=REFUSE)
    add("sched-two-outputs-link", SCHED + ("--csv", "o.csv", "--trace", "l.json"),
        {"o.csv": b"old\n", "l.json": b"@link:o.csv"}, expect=REFUSE)
    add("sched-gantt-bad-ext", SCHED + ("--gantt", "g.txt"), expect=REFUSE)
    add("sched-gantt-png", SCHED + ("--gantt", "g.png"), expect=PASS, outputs=("g.png",))
    add("sched-memplot-svg", SCHED + ("--memory-plot", "m.svg"), expect=PASS, outputs=("m.svg",))
    add("sched-trace", SCHED + ("--trace", "t.json"), expect=PASS, outputs=("t.json",))
    add("sched-timeline-readonly", SCHED + ("--timeline", "ro.json"), {"ro.json": b"@readonly"}, expect=REFUSE)
    add("sched-gantt-on-fifo", SCHED + ("--gantt", "fifo.png"), {"fifo.png": "fifo"})
    # ---- schedule search
    add("search-ok", ("schedule", "search", "-p", "2", "-m", "2", "--time-limit", "2"), expect=PASS)
    add("search-time-nan", ("schedule", "search", "-p", "2", "-m", "2", "--time-limit", "nan"), expect=REFUSE)
    add("search-time-inf", ("schedule", "search", "-p", "2", "-m", "2", "--time-limit", "inf"), expect=REFUSE)
    add("search-time-neg", ("schedule", "search", "-p", "2", "-m", "2", "--time-limit", "-1"), expect=REFUSE)
    add("search-time-1e308", ("schedule", "search", "-p", "2", "-m", "2", "--time-limit", "1e308"), expect=REFUSE)
    add("search-memlimit0", ("schedule", "search", "-p", "2", "-m", "2", "--memory-limit", "0"), expect=REFUSE)
    add("search-workers0", ("schedule", "search", "-p", "2", "-m", "2", "--workers", "0"), expect=REFUSE)
    add("search-workers-huge", ("schedule", "search", "-p", "2", "-m", "2", "--workers", HUGE), expect=REFUSE)
    add("search-workers-257", ("schedule", "search", "-p", "2", "-m", "2", "--workers", "257"), expect=REFUSE)
    add("search-huge", ("schedule", "search", "-p", "64", "-m", "4096"), expect=REFUSE)
    add("search-placement-v-1chunk", ("schedule", "search", "-p", "2", "-m", "2", "--placement", "v", "-v", "1"),
        expect=REFUSE)
    add("search-flag-on-named", ("schedule", "1f1b", "-p", "2", "-m", "2", "--memory-limit", "3"), expect=REFUSE)

    # ---- simulate: plan files
    add("sim-plan-ok", ("simulate", "plan.json"), expect=PASS)
    add("sim-plan-json", ("simulate", "plan.json", "--json"), expect=PASS)
    add("sim-plan-flag-pp", ("simulate", "plan.json", "--pp", "4"), expect=REFUSE)
    add("sim-plan-flag-model", ("simulate", "plan.json", "--model", "tiny"), expect=REFUSE)
    add("sim-plan-flag-m", ("simulate", "plan.json", "-m", "8"), expect=REFUSE)
    add("sim-plan-flag-recompute", ("simulate", "plan.json", "--recompute", "full"), expect=REFUSE)
    add("sim-plan-flag-seq", ("simulate", "plan.json", "--seq-len", "32"), expect=REFUSE)
    add("sim-plan-empty", ("simulate", "p.json"), {"p.json": b""}, expect=REFUSE)
    add("sim-plan-binary", ("simulate", "p.json"), {"p.json": bytes(range(256))}, expect=REFUSE)
    add("sim-plan-list", ("simulate", "p.json"), {"p.json": b"[1,2]"}, expect=REFUSE)
    add("sim-plan-null", ("simulate", "p.json"), {"p.json": b"null"}, expect=REFUSE)
    add("sim-plan-deep", ("simulate", "p.json"), {"p.json": b"[" * 100000 + b"]" * 100000}, expect=REFUSE)
    add("sim-plan-folder", ("simulate", "d"), {"d": "folder"}, expect=REFUSE)
    add("sim-plan-fifo", ("simulate", "f.json"), {"f.json": "fifo"}, expect=REFUSE)
    add("sim-plan-devnull", ("simulate", "n.json"), {"n.json": "devnull-link"}, expect=REFUSE)
    add("sim-plan-missing", ("simulate", "nope.json"), expect=REFUSE)
    for key, value in [("pp", 1e20), ("pp", 0), ("pp", -2), ("pp", "2"), ("pp", 2.5), ("pp", True),
                       ("num_microbatches", 0), ("num_microbatches", 1e20), ("num_microbatches", None),
                       ("microbatch_size", 0), ("microbatch_size", 2 ** 40), ("layers_per_stage", [5]),
                       ("layers_per_stage", [10, 0]), ("layers_per_stage", [5, -5]), ("layers_per_stage", "5,5"),
                       ("layers_per_stage", [5.5, 4.5]), ("schedule", "nope"), ("schedule", 3), ("model", 3),
                       ("model", "nope"), ("cluster", {"gpu": 1}), ("cluster", "nope"), ("tp", 3), ("dp", 0),
                       ("chunks", 0), ("recompute", "sometimes"), ("recompute", ["full"]), ("seq_len", 1e308),
                       ("unknown_key", 1), ("pp", ...)]:
        add(f"sim-plan-{key}={str(value)[:10]}", ("simulate", "p.json"), {"p.json": plan_with(**{key: value})},
            expect=REFUSE)
    add("sim-plan-nan-literal", ("simulate", "p.json"), {"p.json": plan_with(pp=float("nan"))}, expect=REFUSE)
    add("sim-plan-inf-literal", ("simulate", "p.json"), {"p.json": plan_with(num_microbatches=float("inf"))},
        expect=REFUSE)
    add("sim-plan-dup-key", ("simulate", "p.json"), {"p.json": b'{"pp": 2, "pp": 3}'}, expect=EITHER)
    add("sim-plan-yaml", ("simulate", "p.yaml"), {"p.yaml": b"model: model.json\ncluster: cluster.json\n"
                                                 b"schedule: 1f1b\npp: 2\nnum_microbatches: 4\nmicrobatch_size: 1\n"
                                                 b"layers_per_stage: [5, 5]\n"}, expect=PASS)
    add("sim-plan-yaml-bad", ("simulate", "p.yaml"), {"p.yaml": b"pp: [\n"}, expect=REFUSE)
    add("sim-plan-yaml-tag", ("simulate", "p.yaml"), {"p.yaml": b"pp: !!python/object:os.system x\n"}, expect=REFUSE)
    add("sim-plan-model-hf", ("simulate", "p.json"), {"p.json": plan_with(model=str(HF / "gpt2"),
                                                                          layers_per_stage=[7, 7])})
    add("sim-plan-csv-binary", ("simulate", "p.json"),
        {"p.json": plan_with(schedule="custom", schedule_csv="b.csv"), "b.csv": bytes(range(128, 256))}, expect=REFUSE)
    # ---- simulate: flags
    add("sim-flags-ok", SIM_TINY + ("--pp", "2", "-m", "4"), expect=PASS)
    for flag, value in [("--pp", "0"), ("--pp", "3"), ("--pp", HUGE), ("-m", "0"), ("-m", "1e20"), ("--tp", "0"),
                        ("--tp", "3"), ("--dp", "0"), ("--dp", HUGE), ("--chunks", "0"), ("-b", "0"),
                        ("--seq-len", "0"), ("--seq-len", "1e308"), ("--nodes", "0"), ("--gpus", "0"),
                        ("--gpus", "3"), ("--nodes", HUGE)]:
        add(f"sim{flag}={value[:8]}", SIM_TINY + ("--pp", "2", flag, value) if flag != "--pp"
            else SIM_TINY + (flag, value), expect=REFUSE)
    add("sim-model-missing", ("simulate", "--model", "nope.json", "--pp", "2"), expect=REFUSE)
    add("sim-model-empty", ("simulate", "--model", "m.json", "--pp", "2"), {"m.json": b""}, expect=REFUSE)
    add("sim-model-yaml", ("simulate", "--model", "model.yaml", "--cluster", "cluster.json", "--pp", "2"), expect=PASS)
    for key, value in [("num_layers", 0), ("num_layers", 10 ** 9), ("hidden", "64"), ("hidden", 1e308),
                       ("heads", 3), ("heads", 0), ("vocab", -1), ("seq_len", 2.5), ("ffn_hidden", None),
                       ("gated_mlp", "yes"), ("attention", "quantum"), ("kv_heads", 3), ("norm", 5),
                       ("block_norms", -1), ("name", [1])]:
        add(f"sim-model-{key}={str(value)[:8]}", SIM_TINY[:1] + ("--model", "m.json", "--cluster", "cluster.json",
                                                                  "--pp", "2"), {"m.json": model_with(**{key: value})},
            expect=REFUSE)
    for path, value in [("gpu.peak_flops", 0), ("gpu.peak_flops", 1e308), ("gpu.peak_flops", "fast"),
                        ("gpu.memory_bytes", -1), ("gpu.memory_bytes", 1e-300), ("gpu.max_fraction", 2),
                        ("gpu.max_fraction", float("nan")), ("intra.bandwidth", 0), ("intra.latency", -1),
                        ("inter.latency", 1e308), ("gpus_per_node", 0), ("gpus_per_node", 2.5),
                        ("nics_per_node", "1"), ("gpu", None), ("intra", [1]), ("gpu.hbm_bandwidth", float("inf"))]:
        add(f"sim-cluster-{path}={str(value)[:8]}", ("simulate", "--model", "tiny", "--cluster", "c.json", "--pp", "2"),
            {"c.json": cluster_with(path, value)}, expect=REFUSE)
    for name in sorted(p.name for p in HF.iterdir())[:4]:
        add(f"sim-hf-{name}", ("simulate", "--model", str(HF / name), "--pp", "2", "-m", "2"), expect=PASS)
    add("sim-hf-config-file", ("simulate", "--model", str(HF / "gpt2" / "config.json"), "--pp", "2", "-m", "2"),
        expect=PASS)
    add("sim-hf-empty-folder", ("simulate", "--model", "hf", "--pp", "2"), {"hf": "folder"}, expect=REFUSE)
    add("sim-hf-bad-config", ("simulate", "--model", "config.json", "--pp", "2"),
        {"config.json": b'{"model_type": "gpt2", "n_layer": "many"}'}, expect=REFUSE)
    add("sim-hf-weird-type", ("simulate", "--model", "config.json", "--pp", "2"),
        {"config.json": b'{"model_type": "alien", "num_hidden_layers": 2}'}, expect=REFUSE)
    add("sim-csv-ok", SIM_TINY + ("--schedule-csv", "sched.csv"), expect=PASS)
    add("sim-csv-trailing-blank", SIM_TINY + ("--schedule-csv", "c.csv"), {"c.csv": b"0F0,0B0\n1F0,1B0\n\n\n"},
        expect=PASS)
    add("sim-csv-blank-middle", SIM_TINY + ("--schedule-csv", "c.csv"), {"c.csv": b"0F0,0B0\n\n1F0,1B0\n"},
        expect=REFUSE)
    for name, content in [("empty", b""), ("huge-mb", b"99999999F0\n"), ("garbage", b"hello,world\n"),
                          ("missing-b", b"0F0\n1F0\n"), ("dup-op", b"0F0,0F0,0B0\n1F0,1B0\n"),
                          ("crlf", b"0F0,0B0\r\n1F0,1B0\r\n"), ("bom", b"\xef\xbb\xbf0F0,0B0\n1F0,1B0\n"),
                          ("spaces", b" 0F0 , 0B0 \n 1F0 , 1B0 \n"), ("neg-mb", b"0F-1,0B-1\n1F-1,1B-1\n"),
                          ("utf16", "0F0,0B0\n1F0,1B0\n".encode("utf-16")), ("deadlock", b"0B0,0F0\n1F0,1B0\n"),
                          ("quoted", b'"0F0","0B0"\n"1F0","1B0"\n'), ("many-cols", b"0F0," * 3_000_000 + b"\n")]:
        add(f"sim-csv-{name}", SIM_TINY + ("--schedule-csv", "c.csv"), {"c.csv": content},
            expect=EITHER if name in ("crlf", "bom", "spaces", "quoted") else REFUSE)
    add("sim-csv-fifo", SIM_TINY + ("--schedule-csv", "f.csv"), {"f.csv": "fifo"}, expect=REFUSE)
    add("sim-csv-devnull", SIM_TINY + ("--schedule-csv", "n.csv"), {"n.csv": "devnull-link"}, expect=REFUSE)
    # ---- simulate: outputs
    add("sim-timeline-is-plan", ("simulate", "plan.json", "--timeline", "plan.json"), expect=REFUSE)
    add("sim-gantt-is-model", ("simulate", "plan.json", "--trace", "model.json"), expect=REFUSE)
    add("sim-timeline-is-cluster-link", ("simulate", "plan.json", "--timeline", "c-link.json"),
        {"c-link.json": b"@link:cluster.json"}, expect=REFUSE)
    add("sim-timeline-is-csv", SIM_TINY + ("--schedule-csv", "s.json", "--timeline", "s.json"),
        {"s.json": BASE["sched.csv"]}, expect=REFUSE)
    add("sim-timeline-hardlink", ("simulate", "plan.json", "--timeline", "hl.json"), {"hl.json": b"@hardlink:plan.json"},
        expect=REFUSE)
    add("sim-two-outputs", ("simulate", "plan.json", "--gantt", "x.png", "--memory-plot", "x.png"), expect=REFUSE)
    add("sim-timeline-dir", ("simulate", "plan.json", "--timeline", "d.json"), {"d.json": "folder"}, expect=REFUSE)
    add("sim-timeline-devnull", ("simulate", "plan.json", "--timeline", "n.json"), {"n.json": "devnull-link"},
        expect=PASS)
    add("sim-gantt-fifo-readback", ("simulate", "plan.json", "--memory-plot", "f.svg"), {"f.svg": "fifo"})
    add("sim-timeline-ok", ("simulate", "plan.json", "--timeline", "out.json"), expect=PASS, outputs=("out.json",))
    add("sim-oom", ("simulate", "--model", "llama3-70b", "--pp", "2", "-m", "2"), expect=EITHER)
    add("sim-oom-fail", ("simulate", "--model", "llama3-70b", "--pp", "2", "-m", "2", "--fail-on-oom"), expect=EITHER)
    add("sim-profile-report", ("simulate", "plan.json", "--profile", "report.json"), expect=EITHER)
    add("sim-profile-garbage", ("simulate", "plan.json", "--profile", "p.json"), {"p.json": b'{"a": 1}'}, expect=REFUSE)
    add("sim-profile-binary", ("simulate", "plan.json", "--profile", "p.json"), {"p.json": b"\x89PNG\x00\xff"},
        expect=REFUSE)
    add("sim-profile-nan", ("simulate", "plan.json", "--profile", "p.json"),
        {"p.json": json.dumps(REPORT).replace("e-0", "e+300").encode()}, expect=EITHER)
    add("sim-iterations-huge", ("simulate", "plan.json", "--iterations", "1000000"), expect=REFUSE)
    add("sim-synchronise-alone", ("simulate", "plan.json", "--synchronise"), expect=EITHER)

    # ---- optimize
    add("opt-ok", OPT_TINY + ("--global-batch", "4"), expect=PASS)
    add("opt-out-is-model", ("optimize", "--model", "m.json", "--cluster", "cluster.json", "--pp", "2",
                             "--global-batch", "4", "--out", "m.json"), {"m.json": BASE["model.json"]}, expect=REFUSE)
    add("opt-out-is-cluster", OPT_TINY + ("--global-batch", "4", "--out", "cluster.json"), expect=REFUSE)
    add("opt-out-equals-gantt", OPT_TINY + ("--global-batch", "4", "--out", "o.json", "--gantt", "g.png"),
        {"g.png": b"@link:o.json"}, expect=REFUSE)
    add("opt-out-equals-export", OPT_TINY + ("--global-batch", "4", "--out", "o.json", "--export", "megatron",
                                             "--export-out", "o.json"), expect=REFUSE)
    add("opt-export-out-no-export", OPT_TINY + ("--global-batch", "4", "--export-out", "x.txt"), expect=REFUSE)
    add("opt-out-folder", OPT_TINY + ("--global-batch", "4", "--out", "d.json"), {"d.json": "folder"}, expect=REFUSE)
    add("opt-global-batch-huge", OPT_TINY + ("--global-batch", "1000000000"), expect=REFUSE)
    add("opt-global-batch-0", OPT_TINY + ("--global-batch", "0"), expect=REFUSE)
    add("opt-global-batch-nan", OPT_TINY + ("--global-batch", "nan"), expect=REFUSE)
    add("opt-time-limit-nan", ("optimize", "--model", "tiny", "--global-batch", "4", "--time-limit", "nan"),
        expect=REFUSE)
    add("opt-time-limit-inf", ("optimize", "--model", "tiny", "--global-batch", "4", "--time-limit", "inf"),
        expect=REFUSE)
    add("opt-time-limit-1e308", ("optimize", "--model", "tiny", "--global-batch", "4", "--time-limit", "1e308"),
        expect=REFUSE)
    add("opt-solver-limit-inf", OPT_TINY + ("--global-batch", "4", "--solver-time-limit", "inf"), expect=REFUSE)
    add("opt-time-limit-0", ("optimize", "--model", "tiny", "--global-batch", "4", "--time-limit", "0"), expect=REFUSE)
    add("opt-time-limit-tiny", ("optimize", "--model", "tiny", "--cluster", "cluster.json", "--global-batch", "4",
                                "--time-limit", "1e-300"), expect=EITHER)
    add("opt-solver-limit-neg", OPT_TINY + ("--global-batch", "4", "--solver-time-limit", "-1"), expect=REFUSE)
    add("opt-headroom-1", OPT_TINY + ("--global-batch", "4", "--headroom", "1"), expect=REFUSE)
    add("opt-headroom-nan", OPT_TINY + ("--global-batch", "4", "--headroom", "nan"), expect=REFUSE)
    add("opt-jobs-0", OPT_TINY + ("--global-batch", "4", "--jobs", "0"), expect=REFUSE)
    add("opt-jobs-huge", OPT_TINY + ("--global-batch", "4", "--jobs", HUGE), expect=EITHER)  # clamped to 8
    add("opt-layouts-0", OPT_TINY + ("--global-batch", "4", "--layouts", "0"), expect=REFUSE)
    add("opt-mbs-0", OPT_TINY + ("--global-batch", "4", "--microbatch-sizes", "0"), expect=REFUSE)
    add("opt-mbs-not-divisor", OPT_TINY + ("--global-batch", "4", "--microbatch-sizes", "3"), expect=REFUSE)
    add("opt-schedules-bad", OPT_TINY + ("--global-batch", "4", "--schedules", "nope"), expect=REFUSE)
    add("opt-compare-config-bad", OPT_TINY + ("--global-batch", "4", "--compare-config", "tp=x"), expect=REFUSE)
    add("opt-compare-config-unknown", OPT_TINY + ("--global-batch", "4", "--compare-config", "zz=1"), expect=REFUSE)
    add("opt-compare-config-empty", OPT_TINY + ("--global-batch", "4", "--compare-config", ""), expect=REFUSE)
    add("opt-pp-too-many", OPT_TINY[:-4] + ("--pp", "64", "--global-batch", "4"), expect=REFUSE)
    add("opt-model-binary", ("optimize", "--model", "m.json", "--global-batch", "4"), {"m.json": b"\x00\x01\xff"},
        expect=REFUSE)
    add("opt-profile-folder", OPT_TINY + ("--global-batch", "4", "--profile", "d"), {"d": "folder"}, expect=REFUSE)
    add("opt-out-devnull", OPT_TINY + ("--global-batch", "4", "--out", "n.json"), {"n.json": "devnull-link"})

    # ---- export
    for to in ("megatron", "torchtitan", "torch-csv"):
        add(f"export-{to}", ("export", "plan.json", "--to", to), expect=PASS)
    add("export-out-is-plan", ("export", "plan.json", "--to", "megatron", "--out", "plan.json"), expect=REFUSE)
    add("export-out-is-model", ("export", "plan.json", "--to", "torch-csv", "--out", "model.json"), expect=REFUSE)
    add("export-csv-equals-out", ("export", "p.json", "--to", "torchtitan", "--out", "o.txt", "--schedule-csv",
                                  "o.txt"), {"p.json": plan_with(schedule="zb-v", chunks=2,
                                                                 layers_per_stage=[3, 2, 2, 3])}, expect=REFUSE)
    add("export-out-folder", ("export", "plan.json", "--to", "megatron", "--out", "d"), {"d": "folder"}, expect=REFUSE)
    add("export-out-chardev", ("export", "plan.json", "--to", "megatron", "--out", "dev"), {"dev": "chardev"},
        expect=PASS)
    add("export-bad-plan", ("export", "p.json", "--to", "megatron"), {"p.json": b"{}"}, expect=REFUSE)
    add("export-csv-format-megatron", ("export", "plan.json", "--to", "megatron", "--csv-format", "compute_comms"),
        expect=REFUSE)
    add("export-superset-torch", ("export", "plan.json", "--to", "torch-csv", "--recompute-superset"), expect=REFUSE)
    add("export-schedule-csv-megatron", ("export", "plan.json", "--to", "megatron", "--schedule-csv", "s.csv"),
        expect=REFUSE)

    # ---- validate (refusals only: nothing here may launch a run)
    add("val-out-is-plan", ("validate", "plan.json", "--out", "plan.json"), expect=REFUSE)
    add("val-out-folder", ("validate", "plan.json", "--out", "d"), {"d": "folder"}, expect=REFUSE)
    add("val-timeout-inf", ("validate", "plan.json", "--timeout", "inf"), expect=REFUSE)
    add("val-timeout-nan", ("validate", "plan.json", "--timeout", "nan"), expect=REFUSE)
    add("val-timeout-0", ("validate", "plan.json", "--timeout", "0"), expect=REFUSE)
    add("val-scale-0", ("validate", "plan.json", "--scale", "0"), expect=REFUSE)
    add("val-scale-2", ("validate", "plan.json", "--scale", "2"), expect=REFUSE)
    add("val-scale-nan", ("validate", "plan.json", "--scale", "nan"), expect=REFUSE)
    add("val-iterations-0", ("validate", "plan.json", "--iterations", "0"), expect=REFUSE)
    add("val-warmup-neg", ("validate", "plan.json", "--warmup", "-1"), expect=REFUSE)
    add("val-threads-0", ("validate", "plan.json", "--threads", "0"), expect=REFUSE)
    add("val-reps-huge", ("validate", "plan.json", "--calibration-reps", HUGE), expect=REFUSE)
    add("val-iterations-huge", ("validate", "plan.json", "--iterations", "1000000000"), expect=REFUSE)
    add("val-warmup-huge", ("validate", "plan.json", "--warmup", HUGE), expect=REFUSE)
    add("val-threads-huge", ("validate", "plan.json", "--threads", "100000"), expect=REFUSE)
    add("val-cuda", ("validate", "plan.json", "--device", "cuda"), expect=REFUSE)
    add("val-nccl-cpu", ("validate", "plan.json", "--backend", "nccl"), expect=REFUSE)
    add("val-big-plan", ("validate", "p.json"), {"p.json": plan_with(model="llama3-405b", layers_per_stage=[63, 63])},
        expect=REFUSE)
    add("val-two-outputs", ("validate", "plan.json", "--out", "o.json", "--profile-out", "o.json"), expect=REFUSE)
    add("val-profile-out-is-model", ("validate", "plan.json", "--profile-out", "model.json"), expect=REFUSE)
    add("val-gantt-bad-ext", ("validate", "plan.json", "--gantt", "g.bmp"), expect=REFUSE)
    add("val-plan-empty", ("validate", "p.json"), {"p.json": b""}, expect=REFUSE)

    # ---- gantt / compare
    add("gantt-timeline", ("gantt", "timeline.json", "-o", "g.png"), expect=PASS, outputs=("g.png",))
    add("gantt-plan", ("gantt", "plan.json", "-o", "g.svg"), expect=PASS, outputs=("g.svg",))
    add("gantt-report", ("gantt", "report.json", "-o", "g.pdf"), expect=PASS, outputs=("g.pdf",))
    add("gantt-out-is-input", ("gantt", "timeline.json", "-o", "t.png"), {"t.png": b"@link:timeline.json"},
        expect=REFUSE)
    add("gantt-out-proc", ("gantt", "timeline.json", "-o", "/proc/self/x.png"), expect=REFUSE)
    add("gantt-out-folder", ("gantt", "timeline.json", "-o", "d.png"), {"d.png": "folder"}, expect=REFUSE)
    add("gantt-empty", ("gantt", "e.json", "-o", "g.png"), {"e.json": b""}, expect=REFUSE)
    add("gantt-binary", ("gantt", "e.json", "-o", "g.png"), {"e.json": bytes(range(256)) * 10}, expect=REFUSE)
    add("gantt-wrong-kind", ("gantt", "e.json", "-o", "g.png"), {"e.json": b'{"kind": "nope"}'}, expect=REFUSE)
    for name, edit in [("dev-range", op_set(2, 0, 5)), ("dev-neg", op_set(0, 0, -1)), ("dev-float", op_set(0, 0, 0.5)),
                       ("nan-time", op_set(1, 2, float("nan"))), ("inf-end", op_set(1, 3, float("inf"))),
                       ("end-before-start", op_set(1, 3, -5.0)), ("huge-time", op_set(1, 3, 1e308)),
                       ("label-int", op_set(0, 1, 7)), ("short-op", lambda t: t["ops"].__setitem__(0, [0])),
                       ("zero-devices", lambda t: t.__setitem__("num_devices", 0)),
                       ("huge-devices", lambda t: t.__setitem__("num_devices", 10 ** 12)),
                       ("no-ops", lambda t: t.__setitem__("ops", [])),
                       ("ops-dict", lambda t: t.__setitem__("ops", {"a": 1})),
                       ("transfer-bad", lambda t: t.__setitem__("transfers", [[0, 9, "x", "y", 1, 1, 0]])),
                       ("meta-list", lambda t: t.__setitem__("meta", [1]))]:
        add(f"gantt-timeline-{name}", ("gantt", "t.json", "-o", "g.png"), {"t.json": timeline_with(edit)},
            expect=REFUSE)
    add("compare-ok", ("compare", "report.json"), expect=PASS)
    add("compare-gantt-is-report", ("compare", "report.json", "--gantt", "report.json"), expect=REFUSE)
    for name, edit in [("no-measured", lambda r: r.pop("measured")),
                       ("measured-nan", lambda r: r["measured"].__setitem__("iteration_time", float("nan"))),
                       ("timeline-dev", lambda r: r["measured"]["timeline"]["ops"][0].__setitem__(0, 99)),
                       ("timeline-zero-dev", lambda r: r["measured"]["timeline"].__setitem__("num_devices", 0)),
                       ("plan-string", lambda r: r.__setitem__("plan", "x")),
                       ("predicted-list", lambda r: r.__setitem__("predicted", [1])),
                       ("bubble-str", lambda r: r["measured"].__setitem__("bubble_fraction", "lots")),
                       ("time-huge", lambda r: r["measured"]["timeline"]["ops"][0].__setitem__(3, 1e300))]:
        add(f"compare-{name}", ("compare", "r.json"), {"r.json": report_with(edit)}, expect=REFUSE)
        add(f"compare-gantt-{name}", ("compare", "r.json", "--gantt", "g.png"), {"r.json": report_with(edit)},
            expect=REFUSE)
    add("compare-timeline-given", ("compare", "timeline.json"), expect=REFUSE)
    add("compare-folder", ("compare", "d"), {"d": "folder"}, expect=REFUSE)

    # ---- figures / models / clusters / top level
    add("figures-out-file", ("figures", "--out", "plan.json"), expect=REFUSE)
    add("figures-out-under-file", ("figures", "--out", "plan.json/sub"), expect=REFUSE)
    add("figures-out-proc", ("figures", "--out", "/proc/self"), expect=REFUSE)
    add("figures-out-devnull", ("figures", "--out", "n"), {"n": "devnull-link"}, expect=REFUSE)
    for cmd in ("models", "clusters"):
        add(f"{cmd}", (cmd,), expect=PASS)
        add(f"{cmd}-json", (cmd, "--json"), expect=PASS)
        add(f"{cmd}-extra-arg", (cmd, "x"), expect=REFUSE)
    add("no-command", (), expect=REFUSE)
    add("unknown-command", ("frobnicate",), expect=REFUSE)
    add("unknown-flag", SCHED + ("--frob",), expect=REFUSE)
    add("version", ("--version",), expect=PASS)
    return c


