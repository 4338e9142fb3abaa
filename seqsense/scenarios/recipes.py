"""Dataset recipes: the named sweeps the study runs (`datasets/recipes/<name>.json`).

A recipe file is {"name", "description", "seed", "cells": [...]}; each cell is
{name, scenario, knobs, episodes, duration_s[, target, inputs, seed, encoder_target, control, experiment]}:
`encoder_target` is the per-frame observable the cell's frame encoder learns when the target cannot
be seen in one frame (default: the target), `control` marks a cell whose answer is known
("negative": needs no memory, "positive": needs memory), `experiment` one reported without a pass
criterion. `load_recipe` checks every
cell against the scenario registry (knob names, types, ranges, cross-knob rules, and that `target`
and `inputs` are streams the scenario writes) and fills in what a cell leaves out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from seqsense.errors import ConfigError
from seqsense.scenarios.base import episode_rng
from seqsense.scenarios.write import file_provenance, make_scenario

RECIPE_DIR = Path(__file__).resolve().parents[2] / "datasets" / "recipes"
CELL_KEYS = {"name", "scenario", "knobs", "episodes", "duration_s", "target", "inputs", "seed", "encoder_target", "control", "experiment"}
CONTROLS = ("negative", "positive")
REQUIRED_CELL_KEYS = ("name", "scenario", "episodes", "duration_s")
# a cell on recorded logs: its episodes are split into train and test (by episode, seeded); no oracle
DATA_CELL_KEYS = {"name", "logs", "test_logs", "target", "inputs", "test_fraction", "seed", "encoder_target", "experiment",
                  "model_settings"}
REQUIRED_DATA_CELL_KEYS = ("name", "logs", "target", "inputs")
MIN_DATA_EPISODES = 3  # one to train, one to validate, one to test


def recipe_names() -> list[str]:
    """Names of the recipes shipped in datasets/recipes."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a recipe given by name ('quick') or path (ConfigError listing the names if neither)."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        if not p.exists():
            raise ConfigError(f"recipe file '{p}' does not exist.")
        return p
    candidate = RECIPE_DIR / f"{name_or_path}.json"
    if not candidate.exists():
        raise ConfigError(f"unknown recipe {str(name_or_path)!r}; recipes: {', '.join(recipe_names())} (or a path to a .json file).")
    return candidate


def load_recipe(name_or_path: str | os.PathLike) -> list[dict]:
    """The validated cells of a recipe, each {name, scenario, knobs (all), episodes, duration_s, target, inputs, seed, optimal}."""
    path = recipe_path(name_or_path)
    try:
        doc = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"recipe '{path}' is not valid JSON ({e}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list) or not doc["cells"]:
        raise ConfigError(f"recipe '{path}' must be an object with a non-empty list 'cells'.")
    default_seed = doc.get("seed", 0)
    cells, seen = [], set()
    for i, raw in enumerate(doc["cells"]):
        where = f"recipe '{path.name}' cell {i}"
        if isinstance(raw, dict) and "logs" in raw:
            cell = validate_data_cell(raw, default_seed, where=where, base=path.parent)
        else:
            cell = validate_cell(raw, default_seed, where=where)
        if cell["name"] in seen:
            raise ConfigError(f"recipe '{path.name}': cell name {cell['name']!r} appears twice.")
        seen.add(cell["name"])
        cells.append(cell)
    return cells


def validate_data_cell(raw: dict, default_seed: int = 0, where: str = "cell", base: Path | None = None) -> dict:
    """A cell on recorded logs checked and completed: every log opens, every episode has the target and
    the inputs, and there are enough episodes to split (paths relative to the recipe's folder)."""
    from seqsense.log import open_log

    unknown = set(raw) - DATA_CELL_KEYS
    missing = [k for k in REQUIRED_DATA_CELL_KEYS if k not in raw]
    if unknown or missing:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} / missing keys {missing}; a cell on recorded logs "
                          f"takes {sorted(DATA_CELL_KEYS)}.")
    where = f"{where} ({raw['name']!r})"
    logs, inputs, target = raw["logs"], raw["inputs"], raw["target"]
    if not isinstance(logs, list) or not logs or not all(isinstance(x, str) for x in logs):
        raise ConfigError(f"{where}: logs must be a non-empty list of log paths, got {logs!r}.")
    if not isinstance(inputs, list) or not inputs or any(not isinstance(x, str) or x.split("/")[0] in ("truth", "optimal") for x in inputs):
        raise ConfigError(f"{where}: inputs {inputs!r} must be a non-empty list of sensor streams.")
    encoder_target = raw.get("encoder_target", target)
    fraction = raw.get("test_fraction", 0.3)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"{where}: test_fraction={fraction!r} must be a number in (0, 1).")
    test_logs = raw.get("test_logs", [])
    if not isinstance(test_logs, list) or not all(isinstance(x, str) for x in test_logs):
        raise ConfigError(f"{where}: test_logs must be a list of log paths, got {test_logs!r}.")

    def checked(group: list[str]) -> tuple[list[str], int]:
        paths, n = [], 0
        for x in group:
            p = Path(x) if Path(x).is_absolute() or base is None else base / x
            if not p.exists():
                raise ConfigError(f"{where}: log '{p}' does not exist.")
            log = open_log(p)  # a clear error for a directory or a file that is not a seqsense log
            try:
                for ep in log.episodes():
                    for s in [target, encoder_target, *inputs]:
                        if not ep.has_stream(s):
                            raise ConfigError(f"{where}: log '{p}' episode {ep.name!r} has no stream {s!r}; streams: {ep.stream_names}.")
                    n += 1
            finally:
                log.close()
            paths.append(str(p.resolve()))
        return paths, n

    paths, n = checked(logs)
    test_paths, n_test = checked(test_logs)
    need = MIN_DATA_EPISODES - (1 if test_paths else 0)  # with test logs, the logs only train and validate
    if n < need:
        raise ConfigError(f"{where}: the logs hold {n} episode(s); a study needs at least {need} "
                          f"({'train, validation' if test_paths else 'train, validation, test'}). "
                          "Cut long recordings into pieces on import (--episode every=S).")
    if not isinstance(raw.get("experiment", False), bool):
        raise ConfigError(f"{where}: experiment must be true or false, got {raw['experiment']!r}.")
    settings = validate_model_settings(raw.get("model_settings", {}), where)
    return {
        "name": str(raw["name"]),
        "scenario": None,
        "logs": paths,
        "test_logs": test_paths,
        "knobs": {},
        "episodes": n + n_test,
        "test_episodes": n_test,
        "duration_s": None,
        "target": target,
        "inputs": list(inputs),
        "seed": int(raw.get("seed", default_seed)),
        "encoder_target": encoder_target,
        "control": None,
        "experiment": bool(raw.get("experiment", False)),
        "model_settings": settings,
        "test_fraction": float(fraction),
        "optimal": None,
    }


def validate_cell(raw: dict, default_seed: int = 0, where: str = "cell") -> dict:
    """One recipe cell checked and completed (ConfigError saying which cell and what is wrong)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a cell must be an object, got {type(raw).__name__}.")
    unknown = set(raw) - CELL_KEYS
    missing = [k for k in REQUIRED_CELL_KEYS if k not in raw]
    if unknown or missing:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} / missing keys {missing}; valid keys: {sorted(CELL_KEYS)}.")
    where = f"{where} ({raw['name']!r})"
    episodes, seed = raw["episodes"], raw.get("seed", default_seed)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"{where}: episodes={episodes!r} must be a positive integer.")
    if not isinstance(raw.get("knobs", {}), dict):
        raise ConfigError(f"{where}: knobs must be an object of knob: value.")
    try:
        sc = make_scenario(raw["scenario"], raw.get("knobs", {}), seed, raw["duration_s"])
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    prov = file_provenance(sc, episodes)
    probe = make_scenario(sc.name, sc.k, sc.seed, 1.0).episode(0, episode_rng(sc.seed, 0))  # frames are lazy: cheap
    streams = [s.name for s in probe.streams]
    target = raw.get("target", prov["target"])
    inputs = raw.get("inputs", prov["inputs"])
    if target not in streams:
        raise ConfigError(f"{where}: target {target!r} is not a stream of this scenario; streams: {streams}.")
    if not isinstance(inputs, list) or not inputs or any(s not in streams or s.split("/")[0] in ("truth", "optimal") for s in inputs):
        raise ConfigError(f"{where}: inputs {inputs!r} must be a non-empty list of sensor streams of this scenario; streams: {streams}.")
    encoder_target = raw.get("encoder_target", target)
    if encoder_target not in streams:
        raise ConfigError(f"{where}: encoder_target {encoder_target!r} is not a stream of this scenario; streams: {streams}.")
    control = raw.get("control")
    if control is not None and control not in CONTROLS:
        raise ConfigError(f"{where}: control={control!r}; valid: {', '.join(CONTROLS)} (or leave it out).")
    if not isinstance(raw.get("experiment", False), bool):
        raise ConfigError(f"{where}: experiment must be true or false, got {raw['experiment']!r}.")
    settings = validate_model_settings(raw.get("model_settings", {}), where)
    return {
        "name": str(raw["name"]),
        "scenario": sc.name,
        "knobs": dict(sc.k),
        "episodes": int(episodes),
        "duration_s": sc.duration_s,
        "target": target,
        "inputs": list(inputs),
        "seed": sc.seed,
        "optimal": prov["optimal"] if target == prov["target"] else None,
        "encoder_target": encoder_target,
        "control": control,
        "experiment": bool(raw.get("experiment", False)),
    }


def validate_model_settings(settings, where: str) -> dict:
    """`{family: {config key: value}}` checked against the registry and each family's config fields.

    These settings go to a family and to its memoryless twin alike (e.g. stateful training of the rnn
    on a raw IMU, `seqsense.train.STATEFUL_IMU_DEFAULTS`), after the study's own budget."""
    import dataclasses

    from seqsense.config import apply_overrides
    from seqsense.models import MODELS

    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise ConfigError(f"{where}: model_settings must map a family to {{setting: value}}, got {settings!r}.")
    for family, values in settings.items():
        if family not in MODELS:
            raise ConfigError(f"{where}: model_settings names {family!r}, which is not a model family; families: {sorted(MODELS)}.")
        _, config_cls = MODELS[family]
        fields = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"{where}: model_settings for {family}: unknown setting(s) {unknown}; {family} takes {sorted(fields)}.")
        apply_overrides(config_cls(), dict(values), owner=f"{where}: model_settings for {family}")  # types and ranges
    return {f: dict(v) for f, v in settings.items()}
