"""zb-1p, zb-2p and zb-v on the Zero Bubble paper's profiled times, next to the paper's bubble rates.

Qi et al., "Zero Bubble Pipeline Parallelism" (ICLR'24, arXiv 2401.10241): Table 9 gives T_F, T_B, T_W
and T_comm (ms) per setup, Table 5 the bubble rates of its ZB-1p and ZB-2p there, with
bubble rate = (cost - m(T_F + T_B + T_W)) / cost and cost the longest device span (first op to last op).
The paper's Table 8 has ZB-V only for other setups whose profiled times it does not publish; the ZB-V
column here is the paper's own V scheduler (sail-sg/zero-bubble-pipeline-parallelism, zbv.py, run on
these times with per-chunk costs T/2, its default memory limit) as a reference. Ours are measured with
the engine on the generated order.
"""
import pytest

from simulator import StageTimes, StageCost, Workload, build_schedule, check_schedule, simulate, uniform_network

# model, p, m, T_F, T_B, T_W, T_comm (Table 9); paper ZB-1p, ZB-2p (Table 5); paper's V scheduler
ROWS = [
    ("1.5B", 8, 24, 18.522, 18.086, 9.337, 0.601, 0.1585, 0.0433, 0.0703),
    ("1.5B", 8, 32, 18.513, 18.086, 9.331, 0.626, 0.1242, 0.0039, 0.0543),
    ("1.5B", 8, 64, 18.546, 18.097, 9.321, 0.762, 0.0674, 0.0026, 0.0298),
    ("6.2B", 8, 24, 29.718, 29.444, 19.927, 0.527, 0.1323, 0.0029, 0.0403),
    ("6.2B", 8, 32, 29.802, 29.428, 19.530, 0.577, 0.1045, 0.0022, 0.0326),
    ("6.2B", 8, 64, 29.935, 29.621, 19.388, 0.535, 0.0554, 0.0010, 0.0166),
    ("14.6B", 16, 48, 11.347, 11.248, 8.132, 0.377, 0.1397, 0.0066, 0.0498),
    ("14.6B", 16, 64, 11.307, 11.254, 8.101, 0.379, 0.1088, 0.0054, 0.0381),
    ("14.6B", 16, 128, 11.325, 11.308, 8.109, 0.378, 0.0576, 0.0028, 0.0195),
    ("28.3B", 32, 96, 10.419, 10.207, 7.715, 0.408, 0.1421, 0.0038, 0.0531),
    ("28.3B", 32, 128, 10.408, 10.204, 7.703, 0.408, 0.1106, 0.0029, 0.0404),
    ("28.3B", 32, 256, 10.402, 10.248, 7.698, 0.460, 0.0594, 0.0018, 0.0220),
]
SMALL = [r for r in ROWS if r[1] <= 16]  # the p = 32 rows take seconds each: zb-1p only


def paper_bubble_rate(name: str, p: int, m: int, f: float, b: float, w: float, c: float) -> float:
    """Generate ``name`` from the times, simulate it, and return the paper's longest-span bubble rate."""
    v = 2 if name == "zb-v" else 1
    f, b, w = f / v, b / v, w / v  # a chunk is half a stage
    schedule = build_schedule(name, p, m, v, StageTimes.uniform(p * v, f, b, w, c))
    check_schedule(schedule)
    cost = StageCost(f, b, w, activation_bytes=1.0, weight_grad_bytes=0.5)
    result = simulate(Workload(schedule, (cost,) * schedule.num_stages, uniform_network(p, c)))
    spans = []
    for d in range(p):
        ops = [op for op in result.timeline.ops if op.device == d]
        spans.append(max(op.end for op in ops) - min(op.start for op in ops))
    longest = max(spans)
    return (longest - m * v * (f + b + w)) / longest


@pytest.mark.parametrize("row", ROWS, ids=[f"{r[0]}-m{r[2]}" for r in ROWS])
def test_zb_1p_matches_table_5(row):
    name, p, m, f, b, w, c, zb1p, _, _ = row
    assert paper_bubble_rate("zb-1p", p, m, f, b, w, c) == pytest.approx(zb1p, abs=6e-5)


@pytest.mark.parametrize("row", SMALL, ids=[f"{r[0]}-m{r[2]}" for r in SMALL])
def test_zb_2p_and_zb_v_against_the_paper(row):
    """Known gap, reported in the README: our heuristic does not reach the paper's ZB-2p (up to 6 points
    behind) nor its V scheduler (up to 14 points); both still beat ZB-1p / the unit-time V."""
    name, p, m, f, b, w, c, zb1p, zb2p, zbv = row
    ours_2p = paper_bubble_rate("zb-2p", p, m, f, b, w, c)
    ours_v = paper_bubble_rate("zb-v", p, m, f, b, w, c)
    assert ours_2p <= zb2p + 0.065 and ours_2p < zb1p
    assert ours_v <= zbv + 0.145


@pytest.mark.parametrize("p,m", [(4, 16), (16, 48)])
def test_zb_v_at_unit_times_is_zero_bubble_per_device(p, m):
    """F = B = W: every device's span is its own work (the paper's "zero bubble" for ZB-V); the old
    unit-time order idled 19 units at p = 16, m = 48 (issue 12)."""
    assert paper_bubble_rate("zb-v", p, m, 2.0, 2.0, 2.0, 0.0) == pytest.approx(0.0, abs=1e-12)
