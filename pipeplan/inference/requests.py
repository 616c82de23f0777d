"""What an inference plan serves: a mix of requests, each a prompt and a number of tokens to generate.

``ServingSpec.mix`` holds request classes (prompt tokens, output tokens, weight); ``requests`` is how
many requests one pipeline replica serves (None: one per slot, micro-batch size x micro-batches).
The requests come in a fixed interleaved order (``request_order``: smooth weighted round robin,
as nginx balances weighted upstreams), so a run is reproducible without a random seed and every
prefix of the order holds the classes in about their weights' proportions.

The output length counts every generated token, the first one (made by the prefill) included:
a request of output length T runs one prefill pass and T - 1 decode passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import SpecError, positive_int
from ..limits import in_range


@dataclass(frozen=True)
class RequestClass:
    """Requests of ``prompt_len`` prompt tokens that generate ``output_len`` tokens, ``weight`` of every sum(weights)."""

    prompt_len: int
    output_len: int
    weight: int = 1

    def __post_init__(self) -> None:
        for name in ("prompt_len", "output_len", "weight"):
            positive_int(f"serving.mix.{name}", getattr(self, name))
        in_range("serving.mix: prompt_len + output_len", self.prompt_len + self.output_len, "seq_len")

    def text(self) -> str:
        return f"{self.prompt_len}x{self.output_len}" + (f":{self.weight}" if self.weight != 1 else "")


@dataclass(frozen=True)
class ServingSpec:
    """The request mix one pipeline replica serves (see the module docstring)."""

    mix: tuple[RequestClass, ...]
    requests: int | None = None

    def __post_init__(self) -> None:
        if not self.mix or not all(isinstance(c, RequestClass) for c in self.mix):
            raise SpecError("serving.mix: give at least one request class, e.g. 512x128 (prompt x output tokens)")
        if self.requests is not None:
            positive_int("serving.requests", self.requests)

    @staticmethod
    def uniform(prompt_len: int, output_len: int, requests: int | None = None) -> "ServingSpec":
        return ServingSpec((RequestClass(prompt_len, output_len),), requests)

    def request_count(self, slots: int) -> int:
        """How many requests a replica with ``slots`` request slots (micro-batch size x micro-batches) serves."""
        return self.requests if self.requests is not None else slots

    def mix_text(self) -> str:
        return ",".join(c.text() for c in self.mix)

    def to_dict(self) -> dict[str, Any]:
        return {"mix": [{"prompt_len": c.prompt_len, "output_len": c.output_len, "weight": c.weight}
                        for c in self.mix], "requests": self.requests}

    @staticmethod
    def from_dict(data: Any) -> "ServingSpec":
        if isinstance(data, ServingSpec):
            return data
        if not isinstance(data, dict):
            raise SpecError(f"plan.serving: must be a mapping with mix and requests (got {data!r})")
        unknown = sorted(set(data) - {"mix", "requests"})
        if unknown:
            raise SpecError(f"plan.serving.{unknown[0]}: unknown field; known fields are mix, requests")
        mix = data.get("mix")
        if not isinstance(mix, (list, tuple)):
            raise SpecError("plan.serving.mix: must be a list of {prompt_len, output_len, weight}")
        classes = []
        for item in mix:
            if not isinstance(item, dict) or set(item) - {"prompt_len", "output_len", "weight"}:
                raise SpecError(f"plan.serving.mix: each class is {{prompt_len, output_len, weight}} (got {item!r})")
            if "prompt_len" not in item or "output_len" not in item:
                raise SpecError("plan.serving.mix: each class needs prompt_len and output_len")
            classes.append(RequestClass(item["prompt_len"], item["output_len"], item.get("weight", 1)))
        return ServingSpec(tuple(classes), data.get("requests"))


def parse_mix(text: str, field: str = "--mix") -> tuple[RequestClass, ...]:
    """``"512x128:3,2048x256"``: classes of PROMPTxOUTPUT tokens with an optional :WEIGHT (default 1)."""
    classes = []
    for part in str(text).split(","):
        shape, _, weight = part.strip().partition(":")
        prompt, sep, output = shape.partition("x")
        try:
            numbers = (int(prompt), int(output), int(weight) if weight else 1)
        except ValueError:
            numbers = None
        if not sep or numbers is None:
            raise SpecError(f"{field}: {part.strip()!r} is not PROMPTxOUTPUT[:WEIGHT], e.g. 512x128:3,2048x256")
        try:
            classes.append(RequestClass(*numbers))
        except SpecError as err:
            raise SpecError(f"{field}: {part.strip()!r}: {str(err).replace('serving.mix.', '').replace('serving.mix: ', '')}") from None
    return tuple(classes)


def request_order(mix: tuple[RequestClass, ...], count: int) -> list[RequestClass]:
    """``count`` requests, classes interleaved by smooth weighted round robin (see the module docstring)."""
    total = sum(c.weight for c in mix)
    credit = [0] * len(mix)
    order = []
    for _ in range(count):
        credit = [have + c.weight for have, c in zip(credit, mix)]
        pick = max(range(len(mix)), key=lambda i: (credit[i], -i))
        credit[pick] -= total
        order.append(mix[pick])
    return order
