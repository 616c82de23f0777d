"""``pipeplan probe``: micro-benchmark this machine and write the cluster spec fitted to it."""
from __future__ import annotations

import argparse
from typing import Any

from .output import fmt_time, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="measure this machine (GEMMs, attention, memory-bound kernels, overhead, link) into a cluster spec",
        description="Time GEMMs over a transformer layer's shapes, attention cores, memory-bound kernels, a "
        "layer pass's fixed cost, copies and the link between two local ranks in the chosen backend; fit the "
        "cost model's device and link figures to them and write a cluster spec every command accepts "
        "(--cluster FILE, a plan's \"cluster\"). Needs torch (pip install 'pipeplan[validate]').",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--backend", default="gloo", help="gloo (default) or nccl (two GPUs, one rank each)")
    p.add_argument("--out", required=True, metavar="FILE", help="the cluster spec to write (JSON, written atomically)")
    p.add_argument("--json", action="store_true", help="print the fitted figures as JSON")
    p.set_defaults(handler=run_probe)


def _rate(seconds_per_byte: float) -> str:
    return f"{1e-9 / seconds_per_byte:.2f} GB/s" if seconds_per_byte > 0 else "-"


def _summary_rows(spec: Any) -> list[list[str]]:
    gpu, probe = spec.gpu, spec.probe
    q = dict(probe.quantities)

    def fit(name: str) -> list[str]:
        residuals = q[name].fit_residuals
        rms = (sum(r * r for r in residuals) / len(residuals)) ** 0.5 if residuals else 0.0
        return [f"{100 * q[name].spread:.1f} %", f"{100 * rms:.1f} %", "disturbed" if q[name].disturbed else ""]

    gemm = (f"{gpu.gemm_curve.rate / 1e9:.1f} GFLOP/s, halves m/n/k "
            + "/".join(f"{h:.0f}" for h in gpu.gemm_curve.halves) + f", {fmt_time(gpu.gemm_curve.call_s)} a call"
            if gpu.gemm_curve else f"{gpu.max_fraction * gpu.peak_flops / 1e9:.1f} GFLOP/s (tiles and waves)")
    rows = [["GEMM", gemm, *fit("gemm")]]
    for name in ("attention_forward", "attention_backward"):
        rates = getattr(gpu, name).rates
        rows.append([name.replace("_", " "), f"{min(rates) / 1e9:.1f} - {max(rates) / 1e9:.1f} GFLOP/s over "
                     f"{len(rates)} (s, d)", *fit(name)])
    rows += [
        ["memory-bound kernels", f"{gpu.kernel_bandwidth / 1e9:.2f} GB/s (alone)", *fit("elementwise_forward")],
        ["", "(backward)", *fit("elementwise_backward")],
        ["layer pass overhead", "F/I/W " + " / ".join(fmt_time(t) for t in gpu.layer_overheads.block)
         + " a block, head " + " / ".join(fmt_time(t) for t in gpu.layer_overheads.head), *fit("layer")],
        *([["in layers: memory-bound", "F/I/W " + " / ".join(_rate(b) for b in gpu.layer_overheads.memory_of("block"))
             + " a block, head " + " / ".join(_rate(b) for b in gpu.layer_overheads.memory_of("head")), "", "", ""]]
          if gpu.layer_overheads.per_byte else []),
        ["memory (copy)", f"{gpu.hbm_bandwidth / 1e9:.2f} GB/s", *fit("copy")],
        ["link", f"{fmt_time(spec.intra.latency)} + bytes / {spec.intra.bandwidth / 1e9:.2f} GB/s", *fit("link")],
    ]
    return rows


def run_probe(args: argparse.Namespace) -> int:
    from ..fileio import write_json_atomic
    from ..probe.run import ProbeOptions, check, probe
    from .paths import check_paths

    options = ProbeOptions(device=args.device, backend=args.backend)
    check_paths([], [("--out", args.out)], read_back=("--out",))
    check(options)
    spec = probe(options)
    write_json_atomic(args.out, spec.to_dict(), "--out")
    record = spec.probe
    if args.json:
        from .output import print_json

        data = spec.to_dict()
        print_json({"gpu": data["gpu"], "intra": data["intra"], "seconds": record.seconds,
                    "disturbed": record.disturbed, "notes": list(record.notes)})
        return 0
    print(f"probed {record.device}: {record.ranks} ranks, {record.backend}, {record.dtype}, "
          f"{record.threads} thread(s) per rank, {record.seconds:.1f} s")
    print(table(["measured", "fitted", "spread", "fit error (rms)", ""], _summary_rows(spec)))
    if record.disturbed:
        print("warning: the machine stayed disturbed (other processes or the hypervisor took its cores) while "
              "measuring; the figures include that interference:")
        for note in record.notes:
            print(f"  {note}")
    print(f"wrote {args.out}")
    return 0
