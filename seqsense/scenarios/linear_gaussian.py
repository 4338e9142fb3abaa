"""`linear_gaussian`: a known linear-Gaussian system whose optimal filter is stored beside the data.

State x = [p; ṗ; (p̈)] stacked by derivative order over `dim` axes (positions first, so H = [I 0]),
with one of these continuous models per axis (q = `process_noise`, σ = `sigma`, ℓ = `lengthscale_s`):
  constant_velocity      A = [[0, 1], [0, 0]],                  white acceleration of density q
  constant_acceleration  A = [[0, 1, 0], [0, 0, 1], [0, 0, 0]],  white jerk of density q
  matern32               A = [[0, 1], [−λ², −2λ]], λ = √3/ℓ,     Q_c = 4λ³σ² (Matérn ν = 3/2 GP)
  random_stable          A = (S − D)/ℓ over 2·dim coupled states, S skew, D ≻ 0 (drawn from the seed),
                         Q_c = q·I
discretized exactly at Δt = 1/rate_hz (`seqsense.scenarios.kalman`). x₀ ~ N(0, P₀) with P₀ = P∞ for
the stationary models and I for the kinematic ones; y_k = H x_k + v_k, v_k ~ N(0, r² I).

Streams: `measurement`, `truth/state`, `truth/position` (= H x, the default target), and the optimal
filter and smoother computed with the true parameters: `optimal/filter_mean`, `optimal/filter_var`
(diagonal of H P Hᵀ), `optimal/smoother_mean`, `optimal/smoother_var`, `optimal/filter_state_mean`,
`optimal/filter_state_cov` (row-major n×n). With `frames=true` a `camera` stream shows each
measurement as a Gaussian blob at u = ½ + s·y (s in the provenance; |s·y| ≤ 0.45 at 5 std), which is
invertible (the blob centre gives y back), so the stored filter stays optimal for frame inputs.
Hazard: a wall on position x at two stationary (or initial) standard deviations.
"""

from __future__ import annotations

import numpy as np

from seqsense.log import seconds_to_ns
from seqsense.scenarios import kalman, render
from seqsense.scenarios.base import RENDER_BLOCK, EpisodeData, ImageStream, Knob, Scenario, StreamData, register

AXES = ("x", "y", "z")
ORDERS = ("", "d", "dd")  # field prefixes per derivative order: x, dx, ddx
UNITS = "state units"


@register("linear_gaussian")
class LinearGaussian(Scenario):
    """A linear-Gaussian state-space system; owns its matrices and the optimal filter schedule."""

    summary = "a known linear-Gaussian system with the optimal Kalman filter stored: scores are ratios to the optimum"
    default_duration_s = 20.0
    knobs = (
        Knob("dynamics", str, "matern32", "continuous model",
             choices=("constant_velocity", "constant_acceleration", "matern32", "random_stable")),
        Knob("dim", int, 2, "number of observed position axes", 1, 3),
        Knob("rate_hz", float, 30.0, "measurement rate", 1.0, 1000.0),
        Knob("process_noise", float, 1.0, "white-noise spectral density q (kinematic and random_stable models)", 1e-6, 1e3),
        Knob("sigma", float, 1.0, "marginal std of the matern32 process", 1e-3, 1e3),
        Knob("lengthscale_s", float, 1.0, "matern32 lengthscale / random_stable time scale (s)", 0.01, 100.0),
        Knob("meas_std", float, 0.3, "measurement noise std r", 1e-4, 1e3),
        Knob("frames", bool, False, "also render each measurement as a blob in a camera stream (used as input)"),
        Knob("image_size", int, 64, "frame height and width when frames=true", 16, 256),
        Knob("blob_sigma_px", float, 1.5, "blob std in pixels", 0.5, 8.0),
    )

    def check(self) -> None:
        """Frames need a stationary model and at most two axes; build the system matrices."""
        k = self.k
        if k["frames"] and k["dynamics"] in ("constant_velocity", "constant_acceleration"):
            raise self.fail(f"frames=true needs a stationary model (matern32 or random_stable), got dynamics={k['dynamics']!r}.")
        if k["frames"] and k["dim"] > 2:
            raise self.fail(f"frames=true draws the measurement in the image plane: dim must be 1 or 2, got {k['dim']}.")
        self._build()

    def _build(self) -> None:
        """A, L Q_c Lᵀ, F, Q, H, R, P₀ and the field names of the chosen model."""
        k, d = self.k, self.k["dim"]
        stationary = k["dynamics"] in ("matern32", "random_stable")
        if k["dynamics"] == "random_stable":
            rng = self.file_rng()
            n = 2 * d
            B = rng.standard_normal((n, n))
            C = rng.standard_normal((n, n))
            A = ((B - B.T) / 2.0 - (C @ C.T / n + 0.2 * np.eye(n))) / k["lengthscale_s"]
            LQL = k["process_noise"] * np.eye(n)
            orders = 2
        else:
            if k["dynamics"] == "matern32":
                lam = np.sqrt(3.0) / k["lengthscale_s"]
                a, qc = np.array([[0.0, 1.0], [-lam**2, -2 * lam]]), 4 * lam**3 * k["sigma"] ** 2
            elif k["dynamics"] == "constant_velocity":
                a, qc = np.array([[0.0, 1.0], [0.0, 0.0]]), k["process_noise"]
            else:
                a, qc = np.diag([1.0, 1.0], 1), k["process_noise"]
            orders = a.shape[0]
            l_axis = np.zeros((orders, orders))
            l_axis[-1, -1] = qc
            A, LQL = np.kron(a, np.eye(d)), np.kron(l_axis, np.eye(d))
        n = A.shape[0]
        self.A, self.LQL = A, LQL
        self.F, self.Q = kalman.discretize(A, LQL, 1.0 / k["rate_hz"])
        self.H = np.hstack([np.eye(d), np.zeros((d, n - d))])
        self.R = k["meas_std"] ** 2 * np.eye(d)
        self.P0 = kalman.stationary_cov(A, LQL) if stationary else np.eye(n)
        self.m0 = np.zeros(n)
        self.pos_fields = list(AXES[:d])
        self.state_fields = [ORDERS[o] + ax if k["dynamics"] != "random_stable" or o == 0 else f"s{o}{ax}"
                             for o in range(orders) for ax in AXES[:d]]
        pos_std = np.sqrt(np.diag(self.P0)[:d].max())
        self.hazard_value = float(2.0 * pos_std)
        meas_std = np.sqrt(pos_std**2 + k["meas_std"] ** 2)
        self.render_scale = float(0.45 / (5.0 * meas_std))  # 5 measurement std span 0.45 of the image
        self._sched: dict[int, kalman.KalmanSchedule] = {}

    def schedule(self, n_steps: int) -> kalman.KalmanSchedule:
        """Filter/smoother covariances and gains for `n_steps` measurements (computed once)."""
        if n_steps not in self._sched:
            self._sched[n_steps] = kalman.kalman_schedule(self.F, self.Q, self.H, self.R, self.P0, n_steps)
        return self._sched[n_steps]

    def n_steps(self) -> int:
        """Measurements per episode."""
        return max(2, int(round(self.duration_s * self.k["rate_hz"])))

    def provenance(self) -> dict:
        """Inputs, target, optimal streams, hazard and the full system for a Kalman filter model."""
        sched = self.schedule(self.n_steps())
        hp = np.einsum("ij,njk,lk->nil", self.H, sched.P_filt, self.H)
        prov = {
            "inputs": ["camera"] if self.k["frames"] else ["measurement"],
            "target": "truth/position",
            "optimal": "optimal/filter_mean",
            "hazard": {
                "kind": "wall", "stream": "truth/position", "axis": 0, "value": self.hazard_value, "units": UNITS,
                "description": "clearance = value - position[axis]; value is two stationary (or initial) position std",
            },
            "system": {
                "dynamics": self.k["dynamics"],
                "dt_s": 1.0 / self.k["rate_hz"],
                "A": self.A.tolist(), "L_Qc_Lt": self.LQL.tolist(),
                "F": self.F.tolist(), "Q": self.Q.tolist(), "H": self.H.tolist(), "R": self.R.tolist(),
                "x0_mean": self.m0.tolist(), "P0": self.P0.tolist(),
                "state_fields": self.state_fields, "observed_fields": self.pos_fields,
            },
            "optimal_mean_var_trace": float(np.trace(hp, axis1=1, axis2=2).mean()),
        }
        if self.k["frames"]:
            prov["render"] = {
                "center": 0.5, "scale": self.render_scale, "blob_sigma_px": self.k["blob_sigma_px"],
                "inverse": "measurement = (blob centre in normalized image coordinates - center) / scale",
            }
        return prov

    def episode(self, index: int, rng: np.random.Generator) -> EpisodeData:
        """One episode: simulate, filter and smooth with the true parameters."""
        k, d = self.k, self.k["dim"]
        n_steps = self.n_steps()
        x, y = kalman.simulate(rng, self.F, self.Q, self.H, self.R, self.m0, self.P0, n_steps)
        sched = self.schedule(n_steps)
        mf = kalman.filter_means(self.F, self.H, self.m0, sched, y)
        ms = kalman.smoother_means(self.F, mf, sched)
        var_f = np.diagonal(sched.P_filt, axis1=1, axis2=2)[:, :d]
        var_s = np.diagonal(sched.P_smooth, axis1=1, axis2=2)[:, :d]
        n = self.F.shape[0]
        rate = k["rate_hz"]
        t_ns = seconds_to_ns(np.arange(n_steps) / rate)
        f32 = np.float32
        cov_fields = [f"P{i}_{j}" for i in range(n) for j in range(n)]
        streams = [
            StreamData("measurement", "vector", t_ns, y.astype(f32), UNITS, rate, "state", self.pos_fields),
            StreamData("truth/state", "vector", t_ns, x.astype(f32), UNITS, rate, "state", self.state_fields),
            StreamData("truth/position", "vector", t_ns, x[:, :d].astype(f32), UNITS, rate, "state", self.pos_fields),
            StreamData("optimal/filter_mean", "vector", t_ns, mf[:, :d].astype(f32), UNITS, rate, "state", self.pos_fields),
            StreamData("optimal/filter_var", "vector", t_ns, var_f.astype(f32), UNITS + "^2", rate, "state", self.pos_fields),
            StreamData("optimal/smoother_mean", "vector", t_ns, ms[:, :d].astype(f32), UNITS, rate, "state", self.pos_fields),
            StreamData("optimal/smoother_var", "vector", t_ns, var_s.astype(f32), UNITS + "^2", rate, "state", self.pos_fields),
            StreamData("optimal/filter_state_mean", "vector", t_ns, mf.astype(f32), UNITS, rate, "state", self.state_fields),
            StreamData("optimal/filter_state_cov", "vector", t_ns, sched.P_filt.reshape(n_steps, n * n).astype(f32),
                       UNITS + "^2 (row-major n x n)", rate, "state", cov_fields),
        ]
        if k["frames"]:
            streams.insert(0, self._camera(t_ns, y))
        return EpisodeData(streams, {})

    def _camera(self, t_ns: np.ndarray, y: np.ndarray) -> ImageStream:
        """Frames with a white Gaussian blob at the rendered measurement."""
        size = self.k["image_size"]
        u = np.clip(0.5 + self.render_scale * y, 0.0, 1.0)  # beyond 5 std (p < 1e-6 a sample) the blob is clipped
        if u.shape[1] == 1:
            u = np.hstack([u, np.full_like(u, 0.5)])
        sigma = self.k["blob_sigma_px"] / size
        canvas = render.Canvas(size, RENDER_BLOCK)

        def frames(i0: int, i1: int) -> np.ndarray:
            canvas.start(i1 - i0, (0.0, 0.0, 0.0))
            canvas.blend(render.gaussian_blob(u[i0:i1, 0], u[i0:i1, 1], sigma, size), (1.0, 1.0, 1.0))
            return canvas.to_uint8()

        return ImageStream("camera", t_ns, (size, size, 3), frames, self.k["rate_hz"])
