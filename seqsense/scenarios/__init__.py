"""Generated scenarios with ground truth: a registry of scenario classes and the log generator.

Each scenario module registers itself with `@register(name)`; importing this package imports them
all (one explicit line each). `generate()` writes a log; `load_recipe()` reads a study sweep.
"""

from seqsense.scenarios.base import (
    EpisodeData,
    ImageStream,
    Knob,
    Scenario,
    StreamData,
    episode_rng,
    get_scenario,
    register,
    resolve_knobs,
    scenario_names,
)
from seqsense.scenarios.recipes import load_recipe, recipe_names
from seqsense.scenarios.write import file_provenance, generate, make_scenario

from seqsense.scenarios import tracking  # noqa: F401,E402  (registers "tracking")
from seqsense.scenarios import slideshow  # noqa: F401,E402  (registers "slideshow")
from seqsense.scenarios import imu_motion  # noqa: F401,E402  (registers "imu_motion")
from seqsense.scenarios import multirate  # noqa: F401,E402  (registers "multirate")
from seqsense.scenarios import linear_gaussian  # noqa: F401,E402  (registers "linear_gaussian")

__all__ = [
    "EpisodeData",
    "ImageStream",
    "Knob",
    "Scenario",
    "StreamData",
    "episode_rng",
    "file_provenance",
    "generate",
    "get_scenario",
    "load_recipe",
    "make_scenario",
    "recipe_names",
    "register",
    "resolve_knobs",
    "scenario_names",
]
