"""`tracking`: a ball under simple physics seen by a camera, with controllable imperfections.

The ball (radius r, normalized image coordinates, y down) moves under gravity, linear drag, a smooth
random OU force and bounces off the walls of [r, 1 − r]² (see `seqsense.scenarios.physics`), so it is
always fully inside the image unless an occluder hides it. The camera sees it over a plain background
with optional look-alike distractors (independent balls whose colour approaches the target's as
`distractor_similarity` → 1), pixel noise, motion blur, dropped frames and jittered timestamps
(`seqsense.scenarios.camera`). While occluded, the ball is not drawn and a grey box is drawn at a place
drawn independently of the ball's path, so a hidden frame says nothing about where the ball is (see
`seqsense.scenarios.camera`). With `distractor` = f > 0 a look-alike ball (identical colour, its own
independent start and motion under the same physics) is shown during intervals of an independent
renewal process (mean length `distractor_duration_s`, long-run fraction f) and drawn above the
occluder box: a per-frame detector cannot tell it from the target, memory can keep the identity.

Truth at every nominal frame time: `truth/position`, `truth/velocity`, `truth/future_position`
(position `horizon_s` later) and `truth/occluded`; with `distractor` > 0 also `truth/distractor`
(1 while the look-alike is shown) and `truth/distractor_position` (its path, also while not shown).
The default target is chosen by the `target` knob. With `distractor` = 0 nothing extra is drawn
from the random stream, so those logs are unchanged.
Hazard: a wall at x = 0.9; clearance = 0.9 − position.x.
"""

from __future__ import annotations

import numpy as np

from seqsense.log import seconds_to_ns
from seqsense.scenarios import render
from seqsense.scenarios.base import RENDER_BLOCK, EpisodeData, ImageStream, Knob, Scenario, StreamData, register
from seqsense.scenarios.camera import (
    blur_offsets,
    camera_knobs,
    frame_timing,
    interval_index,
    occluder_boxes,
    occlusion_intervals,
)
from seqsense.scenarios.physics import interp_rows, simulate_ball

SUBSTEPS = 4  # physics steps per frame period
TARGET_COLOR = np.array([0.95, 0.35, 0.15], np.float32)
OTHER_COLOR = np.array([0.2, 0.55, 0.95], np.float32)
POS_UNITS = "normalized image coordinates [0, 1] (x right, y down)"
HAZARD = {
    "kind": "wall",
    "stream": "truth/position",
    "axis": 0,
    "value": 0.9,
    "units": "normalized image coordinates",
    "description": "clearance = value - position[axis]; the ball is near the right-hand wall when it is small",
}


@register("tracking")
class Tracking(Scenario):
    """A camera tracking one physical ball; owns the physics and imperfection knobs of the file."""

    summary = "a ball under gravity/drag/random force seen by a camera with noise, blur, drops and occlusion"
    default_duration_s = 20.0
    knobs = camera_knobs(image_size=64, rate_hz=30.0) + (
        Knob("radius", float, 0.06, "ball radius (normalized image units)", 0.02, 0.2),
        Knob("gravity", float, 1.0, "downward acceleration (normalized units/s^2)", 0.0, 20.0),
        Knob("drag", float, 0.1, "linear drag coefficient (1/s)", 0.0, 10.0),
        Knob("restitution", float, 0.9, "fraction of the normal velocity kept at a bounce", 0.0, 1.0),
        Knob("force", float, 1.0, "std of the smooth random force (normalized units/s^2)", 0.0, 20.0),
        Knob("force_tau_s", float, 0.5, "time constant of the random force", 0.05, 10.0),
        Knob("speed", float, 0.5, "initial speed (normalized units/s)", 0.0, 5.0),
        Knob("occlusion", float, 0.0, "fraction of time the ball is hidden by an occluder", 0.0, 0.9),
        Knob("occlusion_duration_s", float, 0.5, "mean length of one occlusion", 0.05, 10.0),
        Knob("distractors", int, 0, "number of look-alike balls moving independently", 0, 8),
        Knob("distractor_similarity", float, 0.5, "distractor colour: 0 = clearly different, 1 = identical to the ball", 0.0, 1.0),
        Knob("distractor", float, 0.0, "fraction of time an identical look-alike ball is shown (independent path)", 0.0, 0.9),
        Knob("distractor_duration_s", float, 1.0, "mean length of one look-alike appearance", 0.05, 10.0),
        Knob("target", str, "position", "default target stream", choices=("position", "velocity", "future_position")),
        Knob("horizon_s", float, 0.5, "look-ahead of truth/future_position", 0.0, 5.0),
    )

    def provenance(self) -> dict:
        """Inputs, target, hazard and the camera facts of this file."""
        return {
            "inputs": ["camera"],
            "target": f"truth/{self.k['target']}",
            "optimal": None,
            "hazard": dict(HAZARD),
            "horizon_s": self.k["horizon_s"],
            "position_units": POS_UNITS,
        }

    def episode(self, index: int, rng: np.random.Generator) -> EpisodeData:
        """One episode: simulate, schedule the camera, and return streams with a lazy frame renderer."""
        k = self.k
        rate, size, r = k["rate_hz"], k["image_size"], k["radius"]
        dt = 1.0 / (rate * SUBSTEPS)
        timing = frame_timing(rng, self.duration_s, rate, k["drop_prob"], k["timestamp_jitter_s"])
        t = timing.t_s
        n_steps = int(np.ceil((t[-1] + k["horizon_s"] + 1.0 / rate) / dt)) + 1
        t_grid = np.arange(n_steps + 1) * dt
        physics = dict(radius=r, gravity=k["gravity"], drag=k["drag"], restitution=k["restitution"],
                       force=k["force"], force_tau_s=k["force_tau_s"], speed=k["speed"])
        P, V, bounces = simulate_ball(rng, n_steps, dt, **physics)
        others = [simulate_ball(rng, n_steps, dt, **physics)[0] for _ in range(k["distractors"])]
        hidden = occlusion_intervals(rng, float(t[-1] + 1.0 / rate), k["occlusion"], k["occlusion_duration_s"])
        occ_j = interval_index(hidden, t)
        boxes = occluder_boxes(rng, len(hidden), r)
        bg = np.float32(0.15) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
        sim = float(k["distractor_similarity"])
        colors = [sim * TARGET_COLOR + (1 - sim) * np.clip(OTHER_COLOR + rng.uniform(-0.1, 0.1, 3), 0, 1)
                  for _ in others]
        noise_rng = np.random.default_rng(rng.integers(2**63))
        look = None
        if k["distractor"] > 0:  # drawn last, so logs without the look-alike keep their random stream
            look = simulate_ball(rng, n_steps, dt, **physics)[0]
            shown = occlusion_intervals(rng, float(t[-1] + 1.0 / rate), k["distractor"], k["distractor_duration_s"])
            look_on = interval_index(shown, t) >= 0  # (N,)

        kept = timing.kept
        sub = blur_offsets(k["motion_blur"], rate)
        t_sub = t[kept][:, None] + sub[None, :]  # (K, S) exposure sub-times
        pos_sub = interp_rows(t_grid, P, t_sub)  # (K, S, 2)
        other_sub = [interp_rows(t_grid, Q, t_sub) for Q in others]
        occ_kept = occ_j[kept]
        look_sub = None if look is None else interp_rows(t_grid, look, t_sub)

        canvas = render.Canvas(size, RENDER_BLOCK)

        def frames(i0: int, i1: int) -> np.ndarray:
            canvas.start(i1 - i0, bg)
            for Q, c in zip(other_sub, colors):
                canvas.blend(render.exposure_disk_alpha(Q[i0:i1], r, size), c)
            oj = occ_kept[i0:i1]
            sel = np.flatnonzero(oj >= 0)
            if len(sel):  # the ball is not drawn on these frames, so the box may go first
                b = boxes[oj[sel]]
                canvas.blend(render.box_alpha(b[:, 0], b[:, 1], b[:, 2], b[:, 3], size), b[:, 4:], frames=sel)
            if look_sub is not None:
                a = render.exposure_disk_alpha(look_sub[i0:i1], r, size)
                a[~look_on[kept[i0:i1]]] = 0.0
                canvas.blend(a, TARGET_COLOR)
            a = render.exposure_disk_alpha(pos_sub[i0:i1], r, size)
            a[oj >= 0] = 0.0
            canvas.blend(a, TARGET_COLOR)
            return canvas.to_uint8(k["pixel_noise"], noise_rng)

        t_ns = seconds_to_ns(t)
        idx = np.arange(len(t)) * SUBSTEPS
        future = interp_rows(t_grid, P, t + k["horizon_s"])
        truth = dict(units=POS_UNITS, rate_hz=rate, frame_id="image")
        streams = [
            ImageStream("camera", seconds_to_ns(timing.stamp_s), (size, size, 3), frames, rate),
            StreamData("truth/position", "vector", t_ns, P[idx].astype(np.float32), fields=["x", "y"], **truth),
            StreamData("truth/velocity", "vector", t_ns, V[idx].astype(np.float32), fields=["vx", "vy"],
                       units="normalized image coordinates / s (x right, y down)", rate_hz=rate, frame_id="image"),
            StreamData("truth/future_position", "vector", t_ns, future.astype(np.float32), fields=["x", "y"], **truth),
            StreamData("truth/occluded", "label", t_ns, (occ_j >= 0).astype(np.int64),
                       units="1 = hidden, 0 = visible", rate_hz=rate, frame_id="image"),
        ]
        if look is not None:
            streams += [
                StreamData("truth/distractor", "label", t_ns, look_on.astype(np.int64),
                           units="1 = look-alike shown, 0 = not", rate_hz=rate, frame_id="image"),
                StreamData("truth/distractor_position", "vector", t_ns, look[idx].astype(np.float32),
                           fields=["x", "y"], **truth),
            ]
        facts = {
            "bounces": bounces,
            "frames_dropped": int(len(t) - len(kept)),
            "occluded_fraction": float(np.mean(occ_j >= 0)),
            "occlusions": int(len(hidden)),
        }
        if look is not None:
            facts["distractor_fraction"] = float(np.mean(look_on))
        return EpisodeData(streams, facts)
