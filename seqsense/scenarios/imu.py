"""Consumer MEMS IMU error model: white noise, turn-on bias and bias random walk, plus disturbances.

For each axis, at sample rate f_s (Δt = 1/f_s):
  measured = true + b_k + n_k,   n_k ~ N(0, N²·f_s),   b_0 ~ N(0, σ_b²),   b_{k+1} = b_k + K·√Δt·w_k
with N the noise density (unit/√Hz), σ_b the turn-on bias std and K the bias random-walk density
(unit/s/√Hz). Defaults describe a typical consumer MEMS IMU (docs/scenarios.md gives the sources):
gyro N = 1.7e-4 rad/s/√Hz (≈ 0.01 °/s/√Hz; BMI160 0.007, ICM-20948 0.015 °/s/√Hz), σ_b = 0.005 rad/s
(≈ 0.3 °/s residual after factory trim), K = 2e-5 rad/s²/√Hz; accelerometer N = 2e-3 m/s²/√Hz
(≈ 200 µg/√Hz; BMI160 180, ICM-20948 230 µg/√Hz), σ_b = 0.05 m/s² (≈ 5 mg), K = 3e-3 m/s³/√Hz
(the random walks are the EuRoC MAV dataset's IMU values); magnetometer noise 0.4 µT per sample and
hard-iron residual 2 µT (AK09916-class: 0.15 µT/LSB).
"""

from __future__ import annotations

import numpy as np

from seqsense.scenarios.base import Knob

GRAVITY_MPS2 = 9.80665


def imu_knobs(with_mag: bool = True) -> tuple[Knob, ...]:
    """Noise knobs of the gyroscope, accelerometer and (optionally) magnetometer."""
    knobs = (
        Knob("gyro_noise_density", float, 1.7e-4, "gyro white noise density (rad/s/sqrt(Hz))", 0.0, 0.1),
        Knob("gyro_bias_std", float, 0.005, "gyro turn-on bias std per axis (rad/s)", 0.0, 1.0),
        Knob("gyro_bias_walk", float, 2.0e-5, "gyro bias random walk density (rad/s^2/sqrt(Hz))", 0.0, 0.01),
        Knob("accel_noise_density", float, 2.0e-3, "accelerometer white noise density (m/s^2/sqrt(Hz))", 0.0, 1.0),
        Knob("accel_bias_std", float, 0.05, "accelerometer turn-on bias std per axis (m/s^2)", 0.0, 5.0),
        Knob("accel_bias_walk", float, 3.0e-3, "accelerometer bias random walk density (m/s^3/sqrt(Hz))", 0.0, 1.0),
    )
    if with_mag:
        knobs += (
            Knob("mag_noise_std", float, 0.4, "magnetometer white noise std per sample (uT)", 0.0, 50.0),
            Knob("mag_bias_std", float, 2.0, "magnetometer hard-iron residual std per axis (uT)", 0.0, 100.0),
        )
    return knobs


def sensor_error(rng: np.random.Generator, n: int, rate_hz: float, density: float, bias_std: float, walk: float) -> tuple[np.ndarray, np.ndarray]:
    """Additive error (n, 3) = bias + white noise of one triaxial sensor, and the bias alone (n, 3)."""
    dt = 1.0 / rate_hz
    bias = np.empty((n, 3))
    bias[0] = rng.standard_normal(3) * bias_std
    bias[1:] = rng.standard_normal((n - 1, 3)) * (walk * np.sqrt(dt))
    bias = np.cumsum(bias, axis=0)
    white = rng.standard_normal((n, 3)) * (density * np.sqrt(rate_hz))
    return bias + white, bias


def tap_pulses(rng: np.random.Generator, t_s: np.ndarray, rate_hz: float, peak: float, width_s: float = 0.01) -> np.ndarray:
    """Specific-force pulses (N, 3) of taps on the sensor mount: Poisson times, half-sine of `width_s`."""
    out = np.zeros((len(t_s), 3))
    if rate_hz <= 0 or peak <= 0:
        return out
    duration = float(t_s[-1] - t_s[0]) if len(t_s) > 1 else 0.0
    n_taps = rng.poisson(rate_hz * duration)
    for t0 in np.sort(rng.uniform(t_s[0], t_s[-1], n_taps)):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        i0, i1 = np.searchsorted(t_s, [t0, t0 + width_s])
        phase = (t_s[i0:i1] - t0) / width_s
        out[i0:i1] += peak * rng.uniform(0.5, 1.0) * np.sin(np.pi * phase)[:, None] * d
    return out
