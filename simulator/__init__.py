"""pipeplan's simulation engine: schedule IR, generators, checker and discrete-event simulator.

Knows stages, devices, links, bytes and seconds; knows nothing of transformers.
"""
from .checker import check_schedule
from .ir import Action, Schedule, ScheduleError, from_csv, to_csv
from .forward_only import continuous_decode, inference
from .generators import gpipe, interleaved, one_f_one_b, zb_h1, zb_h2
from .schedules import SCHEDULES, BubbleForm, ScheduleEntry, SeriesStyle, build_schedule
from .stage_times import StageTimes
from .vshape import zb_v
from .zb_auto import zb_1p, zb_2p

__all__ = [
    "Action", "Schedule", "ScheduleError", "from_csv", "to_csv", "check_schedule",
    "SCHEDULES", "ScheduleEntry", "BubbleForm", "SeriesStyle", "build_schedule",
    "gpipe", "one_f_one_b", "interleaved", "zb_h1", "zb_h2", "zb_v", "zb_1p", "zb_2p", "StageTimes",
    "inference", "continuous_decode",
]
from .engine import SimResult, simulate
from .timeline import OpRecord, Timeline, TransferRecord, bubble_fraction, busy_time, iteration_time
from .workload import (Bucket, Collective, Link, LinkTable, Network, PairLinks, StageCost, UniformLinks, Workload, times_workload,
                       uniform_network, uniform_workload)

__all__ += [
    "SimResult", "simulate", "OpRecord", "Timeline", "TransferRecord", "bubble_fraction", "busy_time",
    "iteration_time", "Bucket", "Collective", "Link", "LinkTable", "PairLinks", "UniformLinks", "Network", "StageCost",
    "Workload", "times_workload", "uniform_network", "uniform_workload",
]
