"""The scenario registry, knob declarations and the data a scenario hands to the writer.

A scenario is a class registered by name (`@register("tracking")`) that declares its knobs and, given
resolved knob values, the seed and the duration, produces episodes as `StreamData` / `ImageStream`
records. `seqsense.scenarios.generate` writes them through the log writer; scenario modules never
touch files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Iterable

import numpy as np

from seqsense.errors import ConfigError

RENDER_BLOCK = 64  # frames rendered and written at a time: bounds memory and stays cache-friendly
_REGISTRY: dict[str, type["Scenario"]] = {}


@dataclasses.dataclass(frozen=True)
class Knob:
    """One declared scenario setting: its type, default, allowed range or choices and a help line."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None

    def range_text(self) -> str:
        """The allowed values as text, e.g. '[0, 1]' or '{position, velocity}'."""
        if self.choices is not None:
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        if self.type is bool:
            return "{true, false}"
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            return f"[{lo}, {hi}]"
        return "any"

    def describe(self) -> str:
        """One line: name, type, default, range and help."""
        return f"{self.name} ({self.type.__name__}, default {self.default!r}, {self.range_text()}): {self.help}"

    def convert(self, value: Any, owner: str) -> Any:
        """`value` converted to this knob's type and checked against its range (ConfigError if not)."""
        v = _convert_value(value, self.type)
        if v is None:
            raise ConfigError(
                f"{owner}: knob {self.name}={value!r} is not a valid {self.type.__name__}; "
                f"expected {self.type.__name__} in {self.range_text()} ({self.help})."
            )
        if self.choices is not None and v not in self.choices:
            raise ConfigError(f"{owner}: knob {self.name}={value!r} is not one of {self.range_text()}.")
        if self.type in (int, float):
            if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
                raise ConfigError(f"{owner}: knob {self.name}={value!r} is out of range {self.range_text()}.")
        return v


def _convert_value(value: Any, tp: type) -> Any:
    """`value` as type `tp`, or None when it cannot be read as one (bools are never numbers)."""
    if isinstance(value, str):
        s = value.strip()
        if tp is bool:
            return {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False,
                    "no": False, "off": False}.get(s.lower())
        if tp is str:
            return s
        try:
            v = float(s) if tp is float else int(s)
        except ValueError:
            return None
        return v if tp is int or math.isfinite(v) else None
    if isinstance(value, (bool, np.bool_)):
        return bool(value) if tp is bool else None
    if tp is int and isinstance(value, (int, np.integer)):
        return int(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is float and isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value):
        return float(value)
    return None


@dataclasses.dataclass
class StreamData:
    """One whole non-image stream of an episode: timestamps, samples and the attributes to store."""

    name: str
    kind: str  # vector / scalar / label / event
    t_ns: np.ndarray  # (N,) int64
    data: np.ndarray  # (N, D) for vectors, (N,) otherwise
    units: str
    rate_hz: float
    frame_id: str
    fields: list[str] | None = None


@dataclasses.dataclass
class ImageStream:
    """A camera stream rendered in blocks: `render(i0, i1)` returns frames i0..i1-1 as uint8 (n, H, W, 3).

    The writer asks for consecutive blocks of at most RENDER_BLOCK frames, in order.
    """

    name: str
    t_ns: np.ndarray  # (N,) int64
    shape: tuple[int, int, int]  # (H, W, C)
    render: Callable[[int, int], np.ndarray]
    rate_hz: float
    frame_id: str = "camera"
    units: str = "intensity 0-255"


@dataclasses.dataclass
class EpisodeData:
    """Everything one generated episode holds: its streams and per-episode facts for the provenance."""

    streams: list[StreamData | ImageStream]
    provenance: dict = dataclasses.field(default_factory=dict)


class Scenario:
    """Base of every scenario: owns the resolved knobs, the seed and the duration of one file.

    Subclasses set `name` (by `register`), `summary`, `knobs` and `default_duration_s`, and implement
    `provenance()` (inputs, target, optimal, hazard and anything a model may use) and
    `episode(index, rng)`. File-level randomness (e.g. a random system shared by all episodes) comes
    from `self.file_rng()`; episode randomness from the `rng` passed in, seeded by (seed, index).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    knobs: ClassVar[tuple[Knob, ...]] = ()
    default_duration_s: ClassVar[float] = 20.0

    def __init__(self, knobs: dict[str, Any], seed: int, duration_s: float):
        self.k = dict(knobs)
        self.seed = int(seed)
        self.duration_s = float(duration_s)
        self.check()

    def check(self) -> None:
        """Cross-knob checks (ConfigError); single knobs are already checked against their ranges."""

    def file_rng(self) -> np.random.Generator:
        """A generator for file-level randomness, independent of every episode's stream."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0,)))

    def provenance(self) -> dict:
        """Scenario-specific file provenance: inputs, target, optimal, hazard and model-usable facts."""
        raise NotImplementedError

    def episode(self, index: int, rng: np.random.Generator) -> EpisodeData:
        """Generate episode `index` from `rng` (seeded by (seed, index))."""
        raise NotImplementedError

    def fail(self, message: str) -> ConfigError:
        """A ConfigError naming this scenario (raise it)."""
        return ConfigError(f"Scenario '{self.name}': {message}")


def episode_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of episode `index`: depends on (seed, index) only, not on the episode count."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1, int(index))))


def register(name: str) -> Callable[[type[Scenario]], type[Scenario]]:
    """Class decorator registering a scenario under `name`."""

    def deco(cls: type[Scenario]) -> type[Scenario]:
        if name in _REGISTRY:
            raise ValueError(f"scenario {name!r} is registered twice ({_REGISTRY[name].__module__}, {cls.__module__}).")
        names = [k.name for k in cls.knobs]
        if len(set(names)) != len(names):
            raise ValueError(f"scenario {name!r} declares a knob twice: {names}.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def scenario_names() -> list[str]:
    """Names of all registered scenarios, sorted."""
    return sorted(_REGISTRY)


def get_scenario(name: str) -> type[Scenario]:
    """The scenario class registered as `name` (ConfigError listing the valid names if none)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown scenario {name!r}; valid scenarios: {', '.join(scenario_names())}.")
    return _REGISTRY[name]


def knobs_text(cls: type[Scenario]) -> str:
    """Every knob of `cls` with type, default and range, one per line."""
    return "\n".join("  " + k.describe() for k in cls.knobs)


def resolve_knobs(cls: type[Scenario], values: dict[str, Any] | None) -> dict[str, Any]:
    """All knobs of `cls` with `values` converted and range-checked and defaults filled in."""
    owner = f"Scenario '{cls.name}'"
    declared = {k.name: k for k in cls.knobs}
    out = {k.name: k.default for k in cls.knobs}
    for key, value in (values or {}).items():
        if key not in declared:
            raise ConfigError(
                f"{owner}: unknown knob {key!r}. Valid knobs:\n{knobs_text(cls)}"
            )
        try:
            out[key] = declared[key].convert(value, owner)
        except ConfigError as e:
            raise ConfigError(f"{e} Valid knobs:\n{knobs_text(cls)}") from None
    return out


def iter_blocks(n: int, block: int) -> Iterable[tuple[int, int]]:
    """(i0, i1) pairs covering range(n) in blocks of at most `block`."""
    for i0 in range(0, n, block):
        yield i0, min(n, i0 + block)
