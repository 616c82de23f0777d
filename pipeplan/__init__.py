"""pipeplan: plan, simulate and validate pipeline-parallel training.

Public API; everything not re-exported here may move.
"""
from simulator import (
    SCHEDULES,
    Action,
    Schedule,
    ScheduleEntry,
    ScheduleError,
    Timeline,
    bubble_fraction,
    build_schedule,
    check_schedule,
    from_csv,
    gpipe,
    interleaved,
    one_f_one_b,
    to_csv,
    zb_h1,
    zb_h2,
    zb_v,
)

from .api import PlanResult, lower, simulate
from .bands.band import Band, PlanBand, plan_band
from .breakdown import CommTime, CommunicationBreakdown, MemoryParts, communication_breakdown, memory_breakdown
from .cluster import CLUSTER_PRESETS, ClusterSpec, GPUSpec, LinkSpec, load_cluster
from .errors import SpecError
from .inference.api import resolve_serving, simulate_serving
from .inference.costs import kv_bytes_per_token
from .inference.metrics import ServingResult
from .inference.requests import RequestClass, ServingSpec
from .export import EXPORTERS, ExportOptions, export_plan
from .metrics import IterationFlops, megatron_flops
from .model import MODEL_PRESETS, ModelSpec, load_model
from .plan import Plan, even_split
from .planner.optimize import optimize
from .planner.result import OptimizeResult
from .inference.planner import ServingAnswer, optimize_serving
from .profile import Profile
from .sizing import Sizing, derive_sizing, make_plan

__version__ = "0.1.0"

__all__ = [
    "SCHEDULES", "ScheduleEntry", "Action", "Schedule", "ScheduleError", "Timeline", "bubble_fraction",
    "build_schedule", "check_schedule", "from_csv", "to_csv", "gpipe", "one_f_one_b", "interleaved", "zb_h1", "zb_h2",
    "zb_v",
    "PlanResult", "simulate", "CLUSTER_PRESETS", "ClusterSpec", "GPUSpec", "LinkSpec", "load_cluster",
    "SpecError", "lower", "MODEL_PRESETS", "ModelSpec", "load_model", "Plan", "even_split", "Profile",
]
__all__ += ["optimize", "OptimizeResult", "EXPORTERS", "ExportOptions", "export_plan", "optimize_serving", "ServingAnswer"]
__all__ += ["CommTime", "CommunicationBreakdown", "MemoryParts", "communication_breakdown", "memory_breakdown",
            "IterationFlops", "megatron_flops", "Sizing", "derive_sizing", "make_plan"]
__all__ += ["simulate_serving", "resolve_serving", "ServingResult", "ServingSpec", "RequestClass", "kv_bytes_per_token"]
__all__ += ["plan_band", "PlanBand", "Band"]
