"""Measured costs that replace the analytic cost model: calibrate once, then ask what-if questions.

``pipeplan validate`` writes one (the ``profile`` key of its report, or ``--profile-out FILE``):
per stage the seconds of F, B, I and W for one micro-batch and the bytes it sends, per used device
pair the link's latency and bandwidth, the device and backend they were measured on, and how much the
calibration's timings scattered (``spread``, see ``pipeplan.bands.calibration``).
``pipeplan simulate --profile FILE`` (and ``lower(..., profile=...)``) use them instead of
FLOPs / peak and datasheet links; memory still comes from the model, since calibration times ops
and does not measure allocations. The validator's calibration produces ``StageProfile`` and
``LinkProfile`` directly (``validator.calibrate``).

A profile is tied to the shapes it was measured at (model, micro-batch size, sequence length) and
to the stage cut; a plan that differs is refused with the field named, so a what-if never silently
mixes measured and unmeasured stages. Links it did not measure keep the cluster's figures.

Recomputation: a stage's times are those of the ops that ran, and ``StageProfile.recompute`` says
whether that stage recomputed (its B and I then hold one forward more). Single-layer timings
(``layers``) are always measured without it. Pricing (``costs.measured_stage_cost``) adds the
measured forward to B and I when the plan recomputes a stage measured without, and takes it off in
the opposite case, so one profile prices every recompute choice of its shapes.

The end of the iteration: ``StageProfile.optimizer`` is a stage's measured optimizer step and
``collectives`` its measured gradient reduction over its data-parallel group (latency and bandwidth
of the all-reduce at the stage's gradient size). ``with_measured_step`` puts them in place of the
analytic ``OPTIMIZER`` and ``REDUCE_GRAD`` costs for the measured cut; a profile without them (or
another cut) keeps the analytic ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from simulator.kinds import GATHER_PARAMS, REDUCE_GRAD
from simulator.workload import Collective, Link, Network, PairLinks, StageCost

from .bands.calibration import CalibrationSpread
from .errors import SpecError, positive_int, positive_number
from .fileio import load_mapping, write_json_atomic
from .limits import in_range

PROFILE_KIND = "pipeplan.profile"
PROFILE_VERSION = 1


@dataclass(frozen=True)
class StageProfile:
    """Seconds of one stage's ops for one micro-batch, and the boundary bytes it sends each way.

    ``recompute``: the stage ran with full recomputation, so ``backward`` and ``backward_input``
    include the forward it re-runs (a profile without the field was measured without).
    ``optimizer``: its optimizer step, once per iteration (None: not measured).
    """

    forward: float
    backward: float
    backward_input: float
    backward_weight: float
    send_forward_bytes: float = 0.0
    send_backward_bytes: float = 0.0
    recompute: bool = False
    optimizer: float | None = None

    def __post_init__(self) -> None:
        names = ("forward", "backward", "backward_input", "backward_weight", "send_forward_bytes", "send_backward_bytes")
        for name in names + (("optimizer",) if self.optimizer is not None else ()):
            positive_number(f"profile.stages.{name}", getattr(self, name), allow_zero=True)
            in_range(f"profile.stages.{name}", getattr(self, name), "bytes" if name.endswith("bytes") else "time")
        if not isinstance(self.recompute, bool):
            raise SpecError(f"profile.stages.recompute: must be true or false (got {self.recompute!r})")


@dataclass(frozen=True)
class LinkProfile:
    """A measured one-way link: a message of X bytes takes ``latency + X / bandwidth`` seconds.

    ``send_overhead``: what issuing one send costs the sender; the validator counts it in the
    sending op, so measured stage times already hold it (kept here to show where time goes).
    """

    src: int
    dst: int
    latency: float
    bandwidth: float
    send_overhead: float = 0.0

    def __post_init__(self) -> None:
        positive_number("profile.links.latency", self.latency, allow_zero=True)
        in_range("profile.links.latency", self.latency, "latency")
        if not (self.bandwidth > 0):
            raise SpecError(f"profile.links.bandwidth: must be > 0 (got {self.bandwidth!r})")
        if self.bandwidth != math.inf:  # unmeasured: no limit
            in_range("profile.links.bandwidth", self.bandwidth, "bandwidth")


@dataclass(frozen=True)
class CollectiveProfile:
    """A stage's measured data-parallel collective (``kind`` REDUCE_GRAD: its gradient all-reduce, or
    reduce-scatter with the distributed optimizer; GATHER_PARAMS: that optimizer's parameter all-gather):
    ``nbytes`` over its group take ``latency + nbytes / bandwidth`` seconds on one member."""

    stage: int
    kind: str
    nbytes: float
    latency: float
    bandwidth: float

    def __post_init__(self) -> None:
        if self.kind not in (REDUCE_GRAD, GATHER_PARAMS):
            raise SpecError(f"profile.collectives.kind: {REDUCE_GRAD} or {GATHER_PARAMS} (got {self.kind!r})")
        positive_number("profile.collectives.nbytes", self.nbytes, allow_zero=True)
        positive_number("profile.collectives.latency", self.latency, allow_zero=True)
        in_range("profile.collectives.latency", self.latency, "latency")
        if not (self.bandwidth > 0):
            raise SpecError(f"profile.collectives.bandwidth: must be > 0 (got {self.bandwidth!r})")

    def collective(self, buckets=()) -> Collective:
        """The simulator's collective: its measured time alone, on no shared port (the calibration timed it
        with the run's other traffic around it, as it times links)."""
        return Collective(self.kind, self.nbytes, Link(self.latency, self.bandwidth, ()), buckets=buckets)


@dataclass(frozen=True)
class Profile:
    device: str
    backend: str
    model: str
    microbatch_size: int
    seq_len: int
    layers_per_stage: tuple[int, ...]
    stages: tuple[StageProfile, ...]
    links: tuple[LinkProfile, ...] = ()
    dtype: str = "float32"
    # One layer of each kind ("embedding", "block", "head") timed alone: lets a planner price other cuts.
    layers: dict[str, StageProfile] | None = None
    boundary_bytes: float = 0.0
    # How much the calibration's timings scattered (pipeplan.bands.calibration); None in profiles
    # recorded before the validator kept it.
    spread: CalibrationSpread | None = None
    collectives: tuple[CollectiveProfile, ...] = ()

    def __post_init__(self) -> None:
        if len(self.stages) != len(self.layers_per_stage):
            raise SpecError(
                f"profile.stages: {len(self.stages)} stages measured but layers_per_stage names "
                f"{len(self.layers_per_stage)}"
            )

    def check_plan(self, model_name: str, layers_per_stage: tuple[int, ...], microbatch_size: int,
                   seq_len: int) -> None:
        """Refuse a plan whose ops were not the ones measured, naming the field that differs.

        Another cut is fine when single layers were timed (``layers``): stages are then priced as
        sums of layers, which misses what fusing them into one op saves but keeps every shape measured.
        """
        checks = [
            ("model", self.model, model_name),
            ("microbatch_size", self.microbatch_size, microbatch_size),
            ("seq_len", self.seq_len, seq_len),
        ]
        if not self.layers:
            checks.insert(1, ("layers_per_stage", tuple(self.layers_per_stage), tuple(layers_per_stage)))
        for name, measured, planned in checks:
            if measured != planned:
                raise SpecError(
                    f"profile.{name}: measured for {measured!r} but the plan has {planned!r}; "
                    f"calibrate this plan with `pipeplan validate`"
                )

    def stage_profiles(self, stage_kinds: list[list[str]]) -> tuple[StageProfile, ...]:
        """Per stage (given as its layers' kinds), the measured stage when the cut is the measured one,
        else the sum of its layers' single-layer timings."""
        if [len(k) for k in stage_kinds] == list(self.layers_per_stage):
            return self.stages
        if not self.layers:
            raise SpecError("profile.layers: this profile has no single-layer timings; calibrate this cut")
        missing = sorted({k for kinds in stage_kinds for k in kinds} - set(self.layers))
        if missing:
            raise SpecError(f"profile.layers: no timing for a {missing[0]} layer")
        out = []
        last = len(stage_kinds) - 1
        for s, kinds in enumerate(stage_kinds):
            parts = [self.layers[k] for k in kinds]
            out.append(StageProfile(
                *(sum(getattr(p, f) for p in parts) for f in ("forward", "backward", "backward_input", "backward_weight")),
                send_forward_bytes=self.boundary_bytes if s < last else 0.0,
                send_backward_bytes=self.boundary_bytes if s > 0 else 0.0,
            ))
        return tuple(out)

    def with_measured_step(self, stages: tuple[StageCost, ...], layers_per_stage: tuple[int, ...]
                           ) -> tuple[StageCost, ...]:
        """``stages`` with the measured optimizer steps and data-parallel collectives in place of the analytic
        ones (the measured cut only; a stage without such a collective, dp = 1, gets none)."""
        if tuple(layers_per_stage) != tuple(self.layers_per_stage):
            return stages
        measured = {(c.stage, c.kind): c for c in self.collectives}
        out = []
        for k, cost in enumerate(stages):
            if self.stages[k].optimizer is not None:
                cost = replace(cost, optimizer=self.stages[k].optimizer)
            priced = tuple(measured[k, c.kind].collective(c.buckets) if (k, c.kind) in measured else c
                           for c in cost.collectives)
            out.append(replace(cost, collectives=priced))
        return tuple(out)

    def network(self, base: Network) -> Network:
        """``base`` with the measured links replaced (their ports kept, port capacity the measured rate).

        A port shared with an unmeasured link keeps the lower of the two rates; finding those links
        reads every device pair once, so the p^2 pairs are sized against the ops limit first.
        """
        from .limits import check

        p = base.num_devices
        check("ops", p * p, f"profile: comparing the measured links with every device pair of {p:,} pipeline "
              "devices", "lower pp")
        measured: dict[tuple[int, int], Link] = {}
        capacity = dict(base.port_capacity)
        for m in self.links:
            if not (0 <= m.src < p and 0 <= m.dst < p):
                raise SpecError(f"profile.links: device pair {m.src}->{m.dst} is outside a {p}-device plan")
            ports = (measured.get((m.src, m.dst)) or base.link(m.src, m.dst)).ports
            measured[m.src, m.dst] = Link(m.latency, m.bandwidth, ports)
            for port in ports:
                capacity[port] = m.bandwidth
        network = Network(PairLinks(p, measured, base), capacity)
        for src in range(p):
            for dst in range(p):
                link = network.link(src, dst)
                for port in link.ports:
                    capacity[port] = min(capacity.get(port, math.inf), link.bandwidth)
        return network

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": PROFILE_KIND,
            "version": PROFILE_VERSION,
            "device": self.device,
            "backend": self.backend,
            "model": self.model,
            "microbatch_size": self.microbatch_size,
            "seq_len": self.seq_len,
            "dtype": self.dtype,
            "layers_per_stage": list(self.layers_per_stage),
            "stages": [_stage_dict(s) for s in self.stages],
            "layers": {k: _stage_dict(v) for k, v in self.layers.items()} if self.layers else None,
            "boundary_bytes": self.boundary_bytes,
            **({"spread": self.spread.to_dict()} if self.spread is not None else {}),
            **({"collectives": [vars(c).copy() for c in self.collectives]} if self.collectives else {}),
            "links": [
                {**vars(link), "bandwidth": link.bandwidth if math.isfinite(link.bandwidth) else None}
                for link in self.links
            ],
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Profile":
        if data.get("kind") != PROFILE_KIND:
            # A validation report carries its profile under "profile".
            if isinstance(data.get("profile"), dict):
                return Profile.from_dict(data["profile"])
            raise SpecError("profile: not a pipeplan profile (written by `pipeplan validate`)")
        if data.get("version") != PROFILE_VERSION:
            raise SpecError(f"profile.version: this pipeplan reads version {PROFILE_VERSION}, got {data.get('version')}")
        for key in ("device", "backend", "model", "microbatch_size", "seq_len", "layers_per_stage", "stages"):
            if key not in data:
                raise SpecError(f"profile.{key}: required field is missing")
        try:
            return Profile(
                device=str(data["device"]), backend=str(data["backend"]), model=str(data["model"]),
                microbatch_size=_count("microbatch_size", data["microbatch_size"]),
                seq_len=_count("seq_len", data["seq_len"]),
                layers_per_stage=tuple(_count("layers_per_stage", n) for n in _items("layers_per_stage", data["layers_per_stage"])),
                stages=tuple(_stage("stages", s) for s in _items("stages", data["stages"])),
                links=tuple(_link(l) for l in _items("links", data.get("links") or [])),
                dtype=str(data.get("dtype", "float32")),
                layers={str(k): _stage("layers", v) for k, v in _mapping("layers", data["layers"]).items()}
                if data.get("layers") else None,
                boundary_bytes=positive_number("profile.boundary_bytes", data.get("boundary_bytes", 0.0), allow_zero=True),
                spread=CalibrationSpread.from_dict(data["spread"]) if data.get("spread") is not None else None,
                collectives=tuple(_collective(c) for c in _items("collectives", data.get("collectives") or [])),
            )
        except KeyError as err:
            raise SpecError(f"profile.{err.args[0]}: required field is missing") from None

    @staticmethod
    def load(path: str) -> "Profile":
        return Profile.from_dict(load_mapping(path, "profile"))

    def save(self, path: str) -> None:
        write_json_atomic(path, self.to_dict())


def _stage_dict(stage: StageProfile) -> dict[str, Any]:
    """A stage's fields, without an unmeasured optimizer step (profiles written before it was measured)."""
    return {k: v for k, v in vars(stage).items() if not (k == "optimizer" and v is None)}


def _items(field: str, value: Any) -> list:
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"profile.{field}: must be a list (got {value!r})")
    return list(value)


def _mapping(field: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"profile.{field}: must be a mapping (got {value!r})")
    return value


def _count(field: str, value: Any) -> int:
    """A whole number >= 1; JSON may hold it as 4 or 4.0."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return positive_int(f"profile.{field}", value)


def _stage(field: str, value: Any) -> StageProfile:
    try:
        return StageProfile(**_mapping(field, value))
    except TypeError as err:  # an unknown or missing key
        raise SpecError(f"profile.{field}: {err}".replace("StageProfile.__init__() ", "")) from None


def _link(value: Any) -> LinkProfile:
    value = _mapping("links", value)
    bandwidth = value["bandwidth"]
    return LinkProfile(
        _index("links.src", value["src"]), _index("links.dst", value["dst"]),
        positive_number("profile.links.latency", value["latency"], allow_zero=True),
        math.inf if bandwidth is None else positive_number("profile.links.bandwidth", bandwidth),
        positive_number("profile.links.send_overhead", value.get("send_overhead", 0.0), allow_zero=True),
    )


def _collective(value: Any) -> CollectiveProfile:
    try:
        return CollectiveProfile(**_mapping("collectives", value))
    except TypeError as err:  # an unknown or missing key
        raise SpecError(f"profile.collectives: {err}".replace("CollectiveProfile.__init__() ", "")) from None


def _index(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"profile.{field}: must be a device index >= 0 (got {value!r})")
    return value


def load_profile(profile: "Profile | str | dict | None") -> "Profile | None":
    if profile is None or isinstance(profile, Profile):
        return profile
    if isinstance(profile, dict):
        return Profile.from_dict(profile)
    return Profile.load(profile)
