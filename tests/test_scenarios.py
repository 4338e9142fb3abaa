"""Contract tests over every registered scenario, determinism, knob errors, the CLI and the recipes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from seqsense.cli import main
from seqsense.errors import ConfigError
from seqsense.log import open_log
from seqsense.log.validate import validate
from seqsense.scenarios import generate, get_scenario, load_recipe, make_scenario, scenario_names

REPO = Path(__file__).resolve().parents[1]
SMALL = {"image_size": 16}  # applied where the scenario has the knob


def small_knobs(name: str, **extra) -> dict:
    """Tiny-image knobs for scenario `name`."""
    names = {k.name for k in get_scenario(name).knobs}
    return {**{k: v for k, v in SMALL.items() if k in names}, **extra}


def datasets(path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by path."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def test_all_five_families_registered():
    assert set(scenario_names()) >= {"slideshow", "tracking", "imu_motion", "multirate", "linear_gaussian"}


@pytest.mark.parametrize("name", scenario_names())
def test_scenario_writes_valid_log_with_provenance(tmp_path, name):
    path = generate(name, tmp_path / f"{name}.h5", episodes=2, seed=1, duration_s=1.5, knobs=small_knobs(name))
    assert [p for p in validate(path) if p.severity == "error"] == []
    log = open_log(path)
    prov = log.provenance
    assert prov["scenario"] == name and prov["seed"] == 1
    assert set(prov["knobs"]) == {k.name for k in get_scenario(name).knobs}
    for key in ("inputs", "target", "optimal", "hazard"):
        assert key in prov
    assert log.episode_names == ["ep_000", "ep_001"]
    ep = log.episode("ep_000")
    for s in prov["inputs"] + [prov["target"], prov["hazard"]["stream"]] + ([prov["optimal"]] if prov["optimal"] else []):
        assert ep.has_stream(s), s
    assert prov["hazard"]["axis"] < len(ep.stream(prov["hazard"]["stream"]).fields)
    for s in ep.streams().values():
        assert s.units and s.frame_id and s.source == f"seqsense generate {name}"
        assert s.kind == "event" or s.rate_hz > 0
        if s.kind == "vector":
            assert len(s.fields) == s.sample_shape[0]
        if s.kind == "image":
            assert s.sample_shape == (16, 16, 3)
        assert s.t[0] >= 0
    assert any(n.startswith("truth/") for n in ep.stream_names)


@pytest.mark.parametrize("name", scenario_names())
def test_same_seed_same_data_other_seed_differs(tmp_path, name):
    kn = small_knobs(name)
    a = datasets(generate(name, tmp_path / "a.h5", episodes=2, seed=7, duration_s=1.0, knobs=kn))
    b = datasets(generate(name, tmp_path / "b.h5", episodes=2, seed=7, duration_s=1.0, knobs=kn))
    c = datasets(generate(name, tmp_path / "c.h5", episodes=2, seed=8, duration_s=1.0, knobs=kn))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
    truth = [k for k in a if "/truth/" in k and k.endswith("/data")]
    assert any(a[k].tobytes() != c[k].tobytes() for k in truth)


def test_episode_depends_on_seed_and_index_only(tmp_path):
    one = datasets(generate("tracking", tmp_path / "one.h5", episodes=1, seed=3, duration_s=1.0, knobs=SMALL))
    three = datasets(generate("tracking", tmp_path / "three.h5", episodes=3, seed=3, duration_s=1.0, knobs=SMALL))
    for key, value in one.items():
        assert three[key].tobytes() == value.tobytes()
    assert three["episodes/ep_001/truth/position/data"].tobytes() != one["episodes/ep_000/truth/position/data"].tobytes()


def test_look_alike_knob_adds_its_truth_and_leaves_the_rest_unchanged(tmp_path):
    base = {**SMALL, "occlusion": 0.2}
    plain = datasets(generate("tracking", tmp_path / "a.h5", episodes=2, seed=4, duration_s=2.0, knobs=base))
    look = datasets(generate("tracking", tmp_path / "b.h5", episodes=2, seed=4, duration_s=2.0,
                             knobs={**base, "distractor": 0.5}))
    assert not any("distractor" in key for key in plain)
    extra = {key for key in look if key not in plain and key.endswith("/data")}
    assert extra == {f"episodes/ep_00{i}/truth/{s}/data" for i in (0, 1) for s in ("distractor", "distractor_position")}
    for key, value in plain.items():  # the look-alike's draws come last: the target's data is the same
        if "/truth/" in key:
            assert look[key].tobytes() == value.tobytes(), key
    ep = open_log(tmp_path / "b.h5").episode("ep_000")
    assert ep.stream("truth/distractor").kind == "label" and ep.stream("truth/distractor_position").fields == ["x", "y"]


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("no_such_knob=1", "unknown knob 'no_such_knob'"),
        ("pixel_noise=lots", "not a valid float"),
        ("pixel_noise=3", "out of range [0, 1]"),
        ("distractors=1.5", "not a valid int"),
        ("distractor=0.95", "out of range [0, 0.9]"),
        ("target=acceleration", "not one of {position, velocity, future_position}"),
    ],
)
def test_bad_knob_exits_2_listing_valid_knobs(tmp_path, capsys, setting, expected):
    out = tmp_path / "x.h5"
    rc = main(["generate", "tracking", "--out", str(out), "--set", setting])
    err = capsys.readouterr().err
    assert rc == 2
    assert expected in err
    assert "occlusion (float, default 0.0, [0, 0.9])" in err  # valid names with ranges
    assert "Traceback" not in err and not out.exists()


def test_unknown_scenario_and_cross_knob_errors(tmp_path, capsys):
    assert main(["generate", "trackin", "--out", str(tmp_path / "x.h5")]) == 2
    assert "valid scenarios: imu_motion, linear_gaussian, multirate, slideshow, tracking" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="hold_min_s"):
        make_scenario("slideshow", {"hold_min_s": 3.0, "hold_max_s": 1.0})
    with pytest.raises(ConfigError, match="stationary model"):
        make_scenario("linear_gaussian", {"frames": True, "dynamics": "constant_velocity"})
    with pytest.raises(ConfigError, match="duration_s"):
        make_scenario("tracking", {}, duration_s=-1.0)


def test_cli_list_and_generate(tmp_path, capsys):
    assert main(["generate", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in scenario_names():
        assert f"{name}: " in listing
    assert "horizon_s (float, default 0.5" in listing
    out = tmp_path / "t.h5"
    rc = main(["generate", "tracking", "--out", str(out), "--episodes", "2", "--seed", "5", "--duration-s", "1",
               "--set", "image_size=16", "--set", "target=velocity"])
    assert rc == 0
    prov = open_log(out).provenance
    assert prov["seed"] == 5 and prov["knobs"]["image_size"] == 16 and prov["target"] == "truth/velocity"


def test_recipes_validate_and_quick_is_small():
    quick = load_recipe("quick")
    full = load_recipe("full")
    assert 8 <= len(quick) <= 12 and len(full) > len(quick)
    scenarios = {c["scenario"] for c in quick}
    assert scenarios == set(scenario_names())
    for c in quick:
        if "camera" in c["inputs"]:
            assert c["knobs"]["image_size"] == 32
        # Generation is cheap and training budgets are in steps; the slideshow cell needs many distinct slides.
        assert c["episodes"] * c["duration_s"] <= 500
    lg = [c for c in quick if c["scenario"] == "linear_gaussian"]
    assert {c["knobs"]["frames"] for c in lg} == {True, False}
    assert all(c["optimal"] == "optimal/filter_mean" for c in lg)


def test_bad_recipe_names_the_cell(tmp_path):
    bad = {"name": "bad", "cells": [{"name": "c0", "scenario": "tracking", "knobs": {"pixel_noise": 5},
                                     "episodes": 2, "duration_s": 1.0}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"cell 0 \('c0'\).*pixel_noise"):
        load_recipe(path)
    bad["cells"][0]["knobs"] = {}
    bad["cells"][0]["target"] = "truth/heading"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="not a stream of this scenario"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="recipes: full, quick"):
        load_recipe("no_such_recipe")


def test_committed_sample_is_small_and_valid():
    path = REPO / "datasets" / "sample" / "tracking_sample.h5"
    assert path.exists() and path.stat().st_size < 2_000_000
    assert [p for p in validate(path) if p.severity == "error"] == []
    assert open_log(path).provenance["scenario"] == "tracking"
