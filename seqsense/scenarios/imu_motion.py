"""`imu_motion`: raw gyroscope, accelerometer and magnetometer logs of a randomly moving rigid body.

World frame: x east, y north, z up; gravity g_w = (0, 0, −9.80665) m/s²; Earth field
m_w = 50 µT at 60° inclination = (0, 25, −43.3) µT. The body's angular velocity ω_b(t) and its linear
acceleration a_w(t) are smooth random signals (sums of sinusoids, `seqsense.scenarios.physics`). On
the IMU grid t_k = k/f_s the orientation follows q_{k+1} = q_k ⊗ Exp(ω_b(t_k)/f_s) exactly, so
integrating the noise-free gyro reproduces the truth. The sensors measure
  gyro  = ω_b(t_k) + error,   accel = R(q_k)ᵀ (a_w − g_w) + error + taps,
  mag   = R(q_k)ᵀ (m_w + d_w(t_k)) + hard iron + noise,
with the error model of `seqsense.scenarios.imu`. Magnetic disturbances d_w (e.g. passing steel)
cover a fraction `mag_disturbance` of the time, each a random direction of magnitude
`mag_disturbance_ut` with a sin² envelope; taps are 10 ms half-sine specific-force pulses on the
mount (sensor-only: the body's motion is unchanged).

Truth (every `truth_decimation`-th IMU sample): `truth/orientation` (w, x, y, z, body → world),
`truth/gravity_body` (unit direction of gravity in the body frame, = R(q)ᵀ(0, 0, −1)) and
`truth/angular_velocity`. Hazard: the body nearly upside down, clearance = 0.5 − g_body.z, negative
when the body is tilted more than 120° from level.
"""

from __future__ import annotations

import numpy as np

from seqsense.log import seconds_to_ns
from seqsense.scenarios.base import EpisodeData, Knob, Scenario, StreamData, register
from seqsense.scenarios.camera import occlusion_intervals
from seqsense.scenarios.imu import GRAVITY_MPS2, imu_knobs, sensor_error, tap_pulses
from seqsense.scenarios.physics import SmoothSignal
from seqsense.scenarios.rotation import canonical, integrate_body_rates, random_quaternion, rotate_inverse

EARTH_FIELD_UT = np.array([0.0, 50.0 * np.cos(np.radians(60.0)), -50.0 * np.sin(np.radians(60.0))])
WORLD_FRAME = "world (x east, y north, z up)"


@register("imu_motion")
class ImuMotion(Scenario):
    """A tumbling, shaking rigid body measured by a 9-axis IMU; owns motion, noise and disturbance knobs."""

    summary = "raw gyro/accel/mag of a randomly rotating body: orientation needs a temporal filter"
    default_duration_s = 20.0
    knobs = (
        Knob("rate_hz", float, 200.0, "IMU sample rate", 100.0, 400.0),
        Knob("truth_decimation", int, 2, "truth streams keep every n-th IMU sample", 1, 20),
        Knob("rotation_rate", float, 1.0, "rms angular velocity per axis (rad/s)", 0.0, 10.0),
        Knob("accel_std", float, 1.0, "rms linear acceleration per axis (m/s^2)", 0.0, 20.0),
        Knob("motion_freq_hz", float, 0.5, "highest frequency of the random motion", 0.05, 5.0),
    ) + imu_knobs(with_mag=True) + (
        Knob("mag_disturbance", float, 0.0, "fraction of time a magnetic disturbance is present", 0.0, 0.9),
        Knob("mag_disturbance_ut", float, 20.0, "peak magnitude of a magnetic disturbance (uT)", 0.0, 500.0),
        Knob("tap_rate_hz", float, 0.0, "mean rate of taps on the sensor mount", 0.0, 10.0),
        Knob("tap_accel", float, 30.0, "peak specific force of a tap (m/s^2)", 0.0, 500.0),
        Knob("target", str, "gravity_body", "default target stream", choices=("gravity_body", "orientation")),
    )

    def provenance(self) -> dict:
        """Inputs, target, hazard and the physical constants of the world frame."""
        return {
            "inputs": ["gyro", "accel", "mag"],
            "target": f"truth/{self.k['target']}",
            "optimal": None,
            "hazard": {
                "kind": "wall",
                "stream": "truth/gravity_body",
                "axis": 2,
                "value": 0.5,
                "units": "unit vector",
                "description": "clearance = value - g_body[2]; negative when the body is tilted more than 120 deg",
            },
            "world_frame": WORLD_FRAME,
            "gravity_world_mps2": [0.0, 0.0, -GRAVITY_MPS2],
            "earth_field_world_ut": EARTH_FIELD_UT.round(6).tolist(),
        }

    def episode(self, index: int, rng: np.random.Generator) -> EpisodeData:
        """One episode of IMU samples and decimated truth."""
        k = self.k
        rate = k["rate_hz"]
        n = max(2, int(round(self.duration_s * rate)))
        t = np.arange(n) / rate
        omega = SmoothSignal(rng, 3, k["rotation_rate"], k["motion_freq_hz"]).value(t)  # (N, 3) body rad/s
        acc_w = SmoothSignal(rng, 3, k["accel_std"], k["motion_freq_hz"]).value(t)  # (N, 3) m/s²
        q = integrate_body_rates(random_quaternion(rng), omega[:-1], 1.0 / rate)  # (N, 4)
        g_w = np.array([0.0, 0.0, -GRAVITY_MPS2])
        f_b = rotate_inverse(q, acc_w - g_w)
        gyro_err, _ = sensor_error(rng, n, rate, k["gyro_noise_density"], k["gyro_bias_std"], k["gyro_bias_walk"])
        acc_err, _ = sensor_error(rng, n, rate, k["accel_noise_density"], k["accel_bias_std"], k["accel_bias_walk"])
        taps = tap_pulses(rng, t, k["tap_rate_hz"], k["tap_accel"])
        disturb = _mag_disturbance(rng, t, k["mag_disturbance"], k["mag_disturbance_ut"])
        mag = rotate_inverse(q, EARTH_FIELD_UT + disturb)
        mag += rng.standard_normal(3) * k["mag_bias_std"] + rng.standard_normal((n, 3)) * k["mag_noise_std"]

        t_ns = seconds_to_ns(t)
        d = k["truth_decimation"]
        t_truth, truth_rate = t_ns[::d], rate / d
        g_body = rotate_inverse(q[::d], np.broadcast_to([0.0, 0.0, -1.0], (len(t_truth), 3)))
        xyz = ["x", "y", "z"]
        streams = [
            StreamData("gyro", "vector", t_ns, (omega + gyro_err).astype(np.float32), "rad/s", rate, "imu", xyz),
            StreamData("accel", "vector", t_ns, (f_b + acc_err + taps).astype(np.float32), "m/s^2", rate, "imu", xyz),
            StreamData("mag", "vector", t_ns, mag.astype(np.float32), "uT", rate, "imu", xyz),
            StreamData("truth/orientation", "vector", t_truth, canonical(q[::d]).astype(np.float32),
                       f"unit quaternion, body -> {WORLD_FRAME}", truth_rate, "imu", ["w", "x", "y", "z"]),
            StreamData("truth/gravity_body", "vector", t_truth, g_body.astype(np.float32),
                       "unit vector (direction of gravity in the body frame)", truth_rate, "imu", xyz),
            StreamData("truth/angular_velocity", "vector", t_truth, omega[::d].astype(np.float32),
                       "rad/s (body frame)", truth_rate, "imu", xyz),
        ]
        facts = {"taps_present": bool(np.any(taps)), "mag_disturbed_fraction": float(np.mean(np.any(disturb != 0, axis=1)))}
        return EpisodeData(streams, facts)


def _mag_disturbance(rng: np.random.Generator, t: np.ndarray, fraction: float, peak_ut: float) -> np.ndarray:
    """World-frame disturbance field (N, 3): sin²-windowed random vectors over renewal intervals."""
    out = np.zeros((len(t), 3))
    for a, b in occlusion_intervals(rng, float(t[-1]), fraction, mean_hidden_s=2.0):
        sel = (t >= a) & (t < b)
        d = rng.standard_normal(3)
        d *= peak_ut * rng.uniform(0.5, 1.0) / np.linalg.norm(d)
        out[sel] = np.sin(np.pi * (t[sel] - a) / (b - a))[:, None] ** 2 * d
    return out
