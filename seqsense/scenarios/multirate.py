"""`multirate`: a planar robot seen by a slow overhead camera and measured by a fast body IMU.

The robot moves in a 1 m × 1 m arena seen from above; world frame x right, y down (the image axes,
so positions in metres are also normalized image coordinates) and z down into the floor, gravity
g_w = (0, 0, +9.80665) m/s². Position p(t) = ½ + s(t) and yaw ψ(t) = ψ₀ + ∫ r(t) dt, with s and the
yaw rate r smooth random signals (`seqsense.scenarios.physics`); s is scaled so that the robot's disk
never leaves the arena. Everything is analytic, so the IMU is exact:
  gyro = (0, 0, r(t)) + error,   accel = R_z(ψ)ᵀ (p̈(t) − g_w) + error   (error model: scenarios.imu).
The camera (10-20 Hz) draws the robot as a disk with a white nose dot in the heading direction and
has the imperfections of `seqsense.scenarios.camera`, including occlusion boxes as in `tracking`.

Truth at `truth_rate_hz` (100 Hz by default, faster than the camera, so a predictor must run between
frames): `truth/position` (m), `truth/velocity` (m/s), `truth/heading` (cos ψ, sin ψ), and
`truth/occluded` at the camera rate. Hazard: a wall at x = 0.75 m (clearance = 0.75 − x, about 1.7
position std from the arena centre).
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
from seqsense.scenarios.imu import GRAVITY_MPS2, imu_knobs, sensor_error
from seqsense.scenarios.physics import SmoothSignal

BODY_COLOR = np.array([0.95, 0.35, 0.15], np.float32)
NOSE_COLOR = np.array([1.0, 1.0, 1.0], np.float32)
POS_UNITS = "m in a 1 m arena (= normalized image coordinates, x right, y down)"


@register("multirate")
class Multirate(Scenario):
    """Camera + IMU of one planar robot with truth between frames; owns the rates and motion knobs."""

    summary = "a robot seen by a 10-20 Hz camera with a 200 Hz IMU, truth at 100 Hz: predict between frames"
    default_duration_s = 20.0
    knobs = camera_knobs(image_size=64, rate_hz=15.0, rate_range=(1.0, 60.0)) + (
        Knob("imu_rate_hz", float, 200.0, "IMU sample rate", 50.0, 1000.0),
        Knob("truth_rate_hz", float, 100.0, "rate of the truth streams (the controller's rate)", 10.0, 400.0),
        Knob("radius", float, 0.06, "robot radius (m = normalized image units)", 0.02, 0.2),
        Knob("position_std", float, 0.15, "rms excursion from the arena centre per axis (m)", 0.0, 0.3),
        Knob("yaw_rate_std", float, 1.0, "rms yaw rate (rad/s)", 0.0, 10.0),
        Knob("motion_freq_hz", float, 0.5, "highest frequency of the random motion", 0.05, 5.0),
        Knob("occlusion", float, 0.0, "fraction of time the robot is hidden by an occluder", 0.0, 0.9),
        Knob("occlusion_duration_s", float, 0.5, "mean length of one occlusion", 0.05, 10.0),
    ) + imu_knobs(with_mag=False) + (
        Knob("target", str, "position", "default target stream", choices=("position", "velocity", "heading")),
    )

    def provenance(self) -> dict:
        """Inputs, target, hazard and frame conventions."""
        return {
            "inputs": ["camera", "gyro", "accel"],
            "target": f"truth/{self.k['target']}",
            "optimal": None,
            "hazard": {
                "kind": "wall",
                "stream": "truth/position",
                "axis": 0,
                "value": 0.75,
                "units": "m",
                "description": "clearance = value - position[axis]; the robot is near the right-hand wall when small",
            },
            "world_frame": "x right, y down (image axes), z down into the floor",
            "gravity_world_mps2": [0.0, 0.0, GRAVITY_MPS2],
            "position_units": POS_UNITS,
        }

    def episode(self, index: int, rng: np.random.Generator) -> EpisodeData:
        """One episode: analytic motion sampled by the camera, the IMU and the truth clock."""
        k = self.k
        r, size = k["radius"], k["image_size"]
        pos = SmoothSignal(rng, 2, k["position_std"], k["motion_freq_hz"])
        pos.amp *= np.minimum(1.0, (0.5 - r - 0.005) / np.abs(pos.amp).sum(axis=0))  # keep the disk inside
        yaw_rate = SmoothSignal(rng, 1, k["yaw_rate_std"], k["motion_freq_hz"])
        yaw0 = rng.uniform(-np.pi, np.pi)

        def position(t):
            return 0.5 + pos.value(t)

        def yaw(t):
            return yaw0 + yaw_rate.integral(t)[:, 0]

        # IMU
        imu_rate = k["imu_rate_hz"]
        t_imu = np.arange(max(2, int(round(self.duration_s * imu_rate)))) / imu_rate
        psi = yaw(t_imu)
        f_w = np.concatenate([pos.second_derivative(t_imu), np.full((len(t_imu), 1), -GRAVITY_MPS2)], axis=1)
        c, s = np.cos(psi), np.sin(psi)
        f_b = np.stack([c * f_w[:, 0] + s * f_w[:, 1], -s * f_w[:, 0] + c * f_w[:, 1], f_w[:, 2]], axis=1)
        w_b = np.zeros((len(t_imu), 3))
        w_b[:, 2] = yaw_rate.value(t_imu)[:, 0]
        g_err, _ = sensor_error(rng, len(t_imu), imu_rate, k["gyro_noise_density"], k["gyro_bias_std"], k["gyro_bias_walk"])
        a_err, _ = sensor_error(rng, len(t_imu), imu_rate, k["accel_noise_density"], k["accel_bias_std"], k["accel_bias_walk"])

        # camera
        rate = k["rate_hz"]
        timing = frame_timing(rng, self.duration_s, rate, k["drop_prob"], k["timestamp_jitter_s"])
        hidden = occlusion_intervals(rng, float(timing.t_s[-1] + 1.0 / rate), k["occlusion"], k["occlusion_duration_s"])
        occ_j = interval_index(hidden, timing.t_s)
        boxes = occluder_boxes(rng, len(hidden), r)
        t_sub = timing.t_s[timing.kept][:, None] + blur_offsets(k["motion_blur"], rate)[None, :]  # (K, S)
        p_sub = position(t_sub.ravel()).reshape(t_sub.shape + (2,))
        psi_sub = yaw(t_sub.ravel()).reshape(t_sub.shape)
        nose_sub = p_sub + 0.6 * r * np.stack([np.cos(psi_sub), np.sin(psi_sub)], axis=-1)
        occ_kept = occ_j[timing.kept]
        bg = np.float32(0.15) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
        canvas = render.Canvas(size, RENDER_BLOCK)
        noise_rng = np.random.default_rng(rng.integers(2**63))

        def frames(i0: int, i1: int) -> np.ndarray:
            canvas.start(i1 - i0, bg)
            hid = occ_kept[i0:i1] >= 0
            for sub, radius, color in ((p_sub, r, BODY_COLOR), (nose_sub, 0.3 * r, NOSE_COLOR)):
                a = render.exposure_disk_alpha(sub[i0:i1], radius, size)
                a[hid] = 0.0
                canvas.blend(a, color)
            sel = np.flatnonzero(hid)
            if len(sel):
                b = boxes[occ_kept[i0:i1][sel]]
                canvas.blend(render.box_alpha(b[:, 0], b[:, 1], b[:, 2], b[:, 3], size), b[:, 4:], frames=sel)
            return canvas.to_uint8(k["pixel_noise"], noise_rng)

        # truth
        truth_rate = k["truth_rate_hz"]
        t_tr = np.arange(max(2, int(round(self.duration_s * truth_rate)))) / truth_rate
        psi_tr = yaw(t_tr)
        xyz = ["x", "y", "z"]
        streams = [
            ImageStream("camera", seconds_to_ns(timing.stamp_s), (size, size, 3), frames, rate),
            StreamData("gyro", "vector", seconds_to_ns(t_imu), (w_b + g_err).astype(np.float32), "rad/s", imu_rate, "imu", xyz),
            StreamData("accel", "vector", seconds_to_ns(t_imu), (f_b + a_err).astype(np.float32), "m/s^2", imu_rate, "imu", xyz),
            StreamData("truth/position", "vector", seconds_to_ns(t_tr), position(t_tr).astype(np.float32),
                       POS_UNITS, truth_rate, "world", ["x", "y"]),
            StreamData("truth/velocity", "vector", seconds_to_ns(t_tr), pos.derivative(t_tr).astype(np.float32),
                       "m/s (x right, y down)", truth_rate, "world", ["vx", "vy"]),
            StreamData("truth/heading", "vector", seconds_to_ns(t_tr),
                       np.stack([np.cos(psi_tr), np.sin(psi_tr)], axis=1).astype(np.float32),
                       "unit vector (cos yaw, sin yaw), yaw from +x towards +y", truth_rate, "world", ["cos", "sin"]),
            StreamData("truth/occluded", "label", seconds_to_ns(timing.t_s), (occ_j >= 0).astype(np.int64),
                       "1 = hidden, 0 = visible", rate, "image"),
        ]
        facts = {"frames_dropped": int(len(timing.t_s) - len(timing.kept)), "occluded_fraction": float(np.mean(occ_j >= 0))}
        return EpisodeData(streams, facts)
