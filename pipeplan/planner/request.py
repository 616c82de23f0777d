"""What one planner search is asked: the model and cluster, the fixed layout, and the choices left open.

``OptimizeRequest.create`` turns user input (preset names, spec files, dicts or objects) into a checked,
frozen request; every argument error is raised there, as a one-line ``SpecError`` naming the argument.
The search steps (``search.py``) take their settings from the request alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from simulator.schedules import SCHEDULES, lookup

from ..cluster import CLUSTER_PRESETS, ClusterSpec, load_cluster
from ..errors import SpecError, positive_int
from ..export import export_target
from ..limits import MAX_SECONDS, check_model, check_planner_size, in_range
from ..lowering import generated_schedule
from ..model import MODEL_PRESETS, ModelSpec, load_model
from ..parallel import check_sequence_parallel, check_tensor_group
from ..plan import Plan, default_placement
from ..profile import Profile, load_profile
from . import clock
from .candidates import schedule_variants
from .problem import Candidate, PartitionProblem, ScheduleShape, build_problem

MAX_JOBS = 8  # worker processes at most; a larger ``jobs`` is clamped, not refused


@dataclass(frozen=True)
class OptimizeRequest:
    """A checked planner request; build one with ``create``.

    Layout: ``tp`` tensor ranks per pipeline device (with ``sequence_parallel`` or not), ``pp``
    pipeline devices per replica and ``dp`` replicas, fixed (Megatron's rank order). Open choices are tuples of
    allowed values, so a one-value tuple pins a dimension: ``variants`` the (schedule, chunks per
    device) pairs, ``microbatch_sizes`` the micro-batch sizes b (None: every divisor of the per-replica
    batch). Cut points and recomputation per stage are always searched. ``seq_len`` is what the plan records (None: the model's; a profile fixes both it and b to
    the values it was measured at). ``model_ref``, ``cluster_ref`` and ``plan_nodes`` are how the
    written plan names its model, cluster and node count.
    """

    model: ModelSpec
    cluster: ClusterSpec
    global_batch: int
    pp: int
    dp: int
    variants: tuple[tuple[str, int], ...]
    model_ref: str | dict
    cluster_ref: str | dict
    plan_nodes: int | None = None
    seq_len: int | None = None
    microbatch_sizes: tuple[int, ...] | None = None
    time_limit: float = 5.0  # CP-SAT budget per candidate, deterministic seconds
    headroom: float = 0.05  # share of each GPU's memory kept free, by the chosen plan and the baselines alike
    distributed_optimizer: bool = False
    tp: int = 1
    sequence_parallel: bool = False
    rescore: int = 3  # proposals the simulator re-scores (besides the best of every variant); the prune keeps them
    jobs: int = 1  # candidates solved at once in worker processes
    profile: Profile | None = None
    blocking_p2p: bool = False  # the plan's point-to-point exchanges block (Megatron 2021), as the plans say
    deadline: float | None = None  # clock.now() after which the search starts no optional work
    # Proposals the simulator polishes: the runner-up schedule often overtakes after polish. A layout
    # search polishes one per layout (it compares layouts, each with its own best proposal).
    polished: int = 2
    target: str | None = None
    # The fastest fitting plan simulated before this search (another layout's, a screen's), in seconds: a
    # candidate whose simulated-time bound is not below it is pruned (``search.Dominated`` if all are).
    incumbent: float = float("inf")
    # Score the winner's baselines (uniform, parameters, brute force); a layout search scores them once, for
    # the final answer, rather than in every layout it searches.
    baselines: bool = True
    pace: clock.Pace = field(default_factory=clock.Pace, compare=False)  # shared by a search's requests
    # The usual-split plans simulated so far (``starts.judge``, by plan file), shared like ``pace``: the screen,
    # the seeds and the baselines ask for the same uniform splits, which at 1008B cost 6 s of CPU each.
    judged: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def create(cls, model: ModelSpec | str | dict, cluster: ClusterSpec | str | dict, global_batch: int,
               pp: int | None = None, dp: int = 1, nodes: int | None = None, seq_len: int | None = None,
               schedules: list[str] | None = None, microbatch_sizes: list[int] | None = None,
               time_limit: float = 5.0, headroom: float = 0.05, distributed_optimizer: bool = False,
               rescore: int = 3, jobs: int | None = None,
               profile: Profile | str | dict | None = None, tp: int = 1,
               sequence_parallel: bool = False, blocking_p2p: bool = False,
               deadline: float | None = None, target: str | None = None) -> OptimizeRequest:
        """Load the specs and check every argument, in the order the errors are reported.

        ``pp`` defaults to all GPUs / dp; ``jobs`` is clamped to [1, MAX_JOBS]. Raises SpecError (one line).
        """
        schedules = target_schedules(target, schedules)
        spec = load_model(model)
        check_model(spec)
        cl = load_cluster(cluster, nodes)
        _check_numbers(dp=dp, global_batch=global_batch, seq_len=seq_len, headroom=headroom, time_limit=time_limit,
                       rescore=rescore)
        pp = _check_layout(spec, cl, global_batch, pp, dp, tp, sequence_parallel)
        if microbatch_sizes is not None:
            _check_microbatch_sizes(microbatch_sizes, global_batch // dp)
        variants = tuple(schedule_variants(schedules))
        check_planner_size(spec, global_batch, tp * pp * dp, cl.gpus_per_node, microbatch_sizes,
                           max(v for _, v in variants), tp, pp, dp)
        prof = load_profile(profile)
        if prof is not None:
            seq_len, microbatch_sizes = _profile_shapes(prof, spec, seq_len, microbatch_sizes)
        model_ref, cluster_ref = _spec_ref(model, spec), _spec_ref(cluster, cl)
        # A ClusterSpec given as an object and written as its preset's name must keep its node count.
        plan_nodes = nodes if nodes is not None else (
            cl.nodes if not isinstance(cluster, str) and isinstance(cluster_ref, str) else None)
        return cls(model=spec, cluster=cl, global_batch=global_batch, pp=pp, dp=dp,
                   variants=variants, model_ref=model_ref, cluster_ref=cluster_ref,
                   plan_nodes=plan_nodes, seq_len=seq_len,
                   microbatch_sizes=None if microbatch_sizes is None else tuple(microbatch_sizes),
                   time_limit=time_limit, headroom=headroom, distributed_optimizer=distributed_optimizer,
                   tp=tp, sequence_parallel=sequence_parallel, rescore=rescore, jobs=max(1, min(jobs or 1, MAX_JOBS)), profile=prof,
                   blocking_p2p=blocking_p2p, deadline=deadline, target=target)

    @property
    def uniform_recompute(self) -> bool:
        """Every stage recomputes the same way: the target takes one setting for all (Megatron)."""
        return self.target is not None and export_target(self.target, "target").uniform_recompute

    def runs(self, schedule: str, m: int, v: int) -> bool:
        """Whether ``schedule`` with m micro-batches and v chunks runs here: its generator accepts it at the
        request's pp, and so does the target."""
        if not SCHEDULES[schedule].accepts(self.pp, m, v):
            return False
        return self.target is None or export_target(self.target, "target").runs(schedule, self.pp, m, v)

    @property
    def replica_batch(self) -> int:
        """Sequences per replica per iteration: global batch / dp, split into m micro-batches of b."""
        return self.global_batch // self.dp

    @property
    def sequence_length(self) -> int:
        """The sequence length every cost is priced at: ``seq_len``, else the model's."""
        return self.seq_len or self.model.seq_len

    @property
    def gpus(self) -> list[int]:
        """Cluster rank of each pipeline device of replica 0; its boundary transfers use these links."""
        return default_placement(self.pp, self.dp, self.tp)

    @property
    def out_of_time(self) -> bool:
        """Past the deadline: the search finishes what it must for an answer and starts nothing else."""
        return self.deadline is not None and clock.now() > self.deadline

    def no_time_for(self, ops: int) -> bool:
        """Past the deadline, or a simulation of ``ops`` ops would end past it at the search's pace so far:
        optional work that needs one does not start (and the search is marked cut short, ``pace.cut``)."""
        late = self.deadline is not None and (clock.now() > self.deadline or self.pace.ends_after(ops, self.deadline))
        self.pace.cut |= late
        return late

    def problem_for(self, candidate: Candidate) -> PartitionProblem:
        """``candidate``'s partition problem on the request's layout (built once per layout and candidate:
        the screen, the search and the baselines ask for the same ones; with a measured profile, each time)."""
        build = _problem if self.profile is None else _problem.__wrapped__
        return build(self.model, self.cluster, candidate, self.sequence_length, self.tp, self.pp, self.dp,
                     self.distributed_optimizer, self.sequence_parallel, self.headroom, self.profile,
                     self.uniform_recompute)

    def plan_for(self, candidate: Candidate, layers: tuple[int, ...], recompute: tuple[bool, ...]) -> Plan:
        """The plan file for ``candidate`` cut into ``layers`` per stage, ``recompute`` per stage."""
        return Plan(model=self.model_ref, cluster=self.cluster_ref, nodes=self.plan_nodes,
                    schedule=candidate.schedule, pp=self.pp, chunks=candidate.chunks,
                    num_microbatches=candidate.num_microbatches, microbatch_size=candidate.microbatch_size,
                    layers_per_stage=tuple(layers), recompute=tuple("full" if r else "none" for r in recompute),
                    seq_len=self.seq_len, dp=self.dp, tp=self.tp, sequence_parallel=self.sequence_parallel,
                    distributed_optimizer=self.distributed_optimizer, blocking_p2p=self.blocking_p2p)


@lru_cache(maxsize=1024)  # a problem is a few per-layer tuples and the schedule's count vectors
def _problem(model: ModelSpec, cluster: ClusterSpec, candidate: Candidate, seq_len: int, tp: int, pp: int, dp: int,
             distributed_optimizer: bool, sequence_parallel: bool, headroom: float, profile: Profile | None,
             uniform_recompute: bool) -> PartitionProblem:
    shape = _shape(candidate.schedule, pp, candidate.num_microbatches, candidate.chunks)
    return build_problem(model, cluster, candidate, shape, seq_len, default_placement(pp, dp, tp), dp,
                         distributed_optimizer, headroom, profile=profile, tp=tp, sequence_parallel=sequence_parallel,
                         uniform_recompute=uniform_recompute)


@lru_cache(maxsize=1024)  # layouts with the same pp and m share one generated schedule's shape
def _shape(name: str, p: int, m: int, v: int) -> ScheduleShape:
    return ScheduleShape.of(generated_schedule(name, p, m, v))


def target_schedules(target: str | None, schedules: list[str] | None) -> list[str] | None:
    """The schedules to search for an export ``target``: its own when none are named; named ones it does not
    run are a one-line error."""
    if target is None:
        return schedules
    runs = export_target(target, "target").schedules
    if runs is None:
        return schedules
    if schedules is None:
        return list(runs)
    for name in schedules:
        entry = lookup(name)
        if entry is None or entry.name not in runs:
            raise SpecError(f"--schedules: --target {target} runs {' and '.join(runs)}, not {name}; drop it or "
                            "the target")
    return schedules


def _check_numbers(dp: int, global_batch: int, seq_len: int | None, headroom: float, time_limit: float,
                   rescore: int) -> None:
    positive_int("dp", dp)
    positive_int("global_batch", global_batch)
    in_range("global_batch", global_batch, "global_batch")
    if seq_len is not None:
        positive_int("seq_len", seq_len)
        in_range("seq_len", seq_len, "seq_len")
    if not 0 <= headroom < 1:
        raise SpecError(f"headroom: must be in [0, 1) (got {headroom}); 0.05 keeps 5 % of each GPU free")
    if not 0 < time_limit <= MAX_SECONDS:  # NaN too: it would make every solve give up at once
        raise SpecError(f"time_limit: must be in (0, {MAX_SECONDS:.0f}] seconds (a week) (got {time_limit})")
    positive_int("rescore", rescore)


def _check_layout(spec: ModelSpec, cl: ClusterSpec, global_batch: int, pp: int | None, dp: int, tp: int = 1,
                  sequence_parallel: bool = False) -> int:
    """``pp`` (all GPUs / (tp·dp) when None), once tp x pp x dp fits the cluster with tensor groups inside a
    node, dp divides the batch and pp the layers."""
    positive_int("tp", tp)
    check_tensor_group(tp, cl.gpus_per_node)
    check_sequence_parallel(sequence_parallel, tp, tp_field="--tp")
    spec.check_tp(tp)
    groups = cl.num_gpus // tp  # tensor groups: what pipeline devices and replicas are made of
    if pp is None and dp > groups:
        each = f" (tp = {tp} each)" if tp > 1 else ""
        raise SpecError(f"dp: {dp} replicas need at least {dp * tp} GPUs{each} but {cl.name} has "
                        f"{cl.num_gpus} with {cl.nodes} node(s); raise --nodes or lower --dp")
    pp = pp if pp is not None else groups // dp
    positive_int("pp", pp)
    if pp * dp > groups:
        what = "pp x dp" if tp == 1 else "tp x pp x dp"
        raise SpecError(f"pp: {what} = {pp * dp * tp} GPUs but {cl.name} has {cl.num_gpus} with {cl.nodes} node(s); "
                        f"raise --nodes or lower --pp/--dp")
    if global_batch % dp:
        raise SpecError(f"global_batch: {global_batch} is not divisible by dp = {dp}")
    L = spec.num_pipeline_layers
    if pp > L:
        raise SpecError(f"pp: {pp} pipeline devices need at least {pp} layers; {spec.name} has {L}; lower --pp")
    return pp


def _check_microbatch_sizes(sizes: list[int], batch: int) -> None:
    for b in sizes:
        positive_int("microbatch_sizes", b)
        in_range("microbatch_sizes", b, "microbatch_size")
    if not any(batch % b == 0 for b in sizes):
        raise SpecError(f"microbatch_sizes: none of {list(sizes)} divides the per-replica batch of "
                        f"{batch} (global batch / dp); choose sizes that divide it")


def _profile_shapes(prof: Profile, spec: ModelSpec, seq_len: int | None,
                    microbatch_sizes: list[int] | None) -> tuple[int, list[int]]:
    """The sequence length and micro-batch sizes a profile can price; errors name the field that clashes."""
    if prof.model != spec.name:
        raise SpecError(f"profile.model: measured for {prof.model!r} but the model is {spec.name!r}; "
                        "calibrate this model with `pipeplan validate`")
    if not prof.layers:
        raise SpecError("profile.layers: this profile has no single-layer timings, so other cuts cannot be "
                        "priced; re-calibrate with `pipeplan validate`")
    if seq_len is not None and seq_len != prof.seq_len:
        raise SpecError(f"seq_len: the profile was measured at {prof.seq_len}; drop --seq-len or calibrate at {seq_len}")
    if microbatch_sizes and list(microbatch_sizes) != [prof.microbatch_size]:
        raise SpecError(f"microbatch_sizes: the profile was measured at micro-batch size {prof.microbatch_size}; "
                        "drop --microbatch-sizes or calibrate at the size you want")
    return prof.seq_len, [prof.microbatch_size]


def _spec_ref(given, spec):
    """What the plan file names: the user's preset name or spec file (made absolute), a preset's name,
    or the spec inline."""
    if isinstance(given, str):
        # A spec file is named by its absolute path: a relative one would be looked up beside the plan
        # file (then in the folder the plan is used from), not where optimize ran.
        presets = MODEL_PRESETS if isinstance(spec, ModelSpec) else CLUSTER_PRESETS
        return given if given in presets else str(Path(given).resolve())
    if isinstance(spec, ModelSpec):
        return spec.name if MODEL_PRESETS.get(spec.name) == spec else spec.to_dict()
    preset = CLUSTER_PRESETS.get(spec.name)
    return spec.name if preset is not None and preset.with_nodes(spec.nodes) == spec else spec.to_dict()
