"""What a study sweeps and how much each model trains: budgets in optimizer steps, never seconds."""

from __future__ import annotations

import dataclasses

from seqsense.errors import ConfigError

MIN_R2 = 0.5  # below this best R² on the test episodes a cell's verdicts are inconclusive
SMOOTHING_TAUS_S = (0.03, 0.1, 0.3, 1.0)  # exponential-smoothing time constants tried on validation
ENCODER_WINDOW = 16  # the per-frame encoder sees ticks one at a time: its window only batches them


@dataclasses.dataclass
class StudyConfig:
    """What to sweep and the equal budget every model (full and twin alike) trains on.

    `families` empty = every registered family that applies to a cell. With `cached_features` (the
    quick default) each cell's per-frame encoder is trained once on the frames, its features are
    cached as a vector stream in place of each image input, and every family and twin trains on the
    same features, so they differ only in how they combine ticks over time; without it (`--full`)
    every model trains end to end on the frames, starting from that encoder.
    """

    recipe: str = "quick"
    seeds: tuple[int, ...] = (0,)
    families: tuple[str, ...] = ()
    steps: int = 300  # optimizer steps per model (each family and its twin)
    encoder_steps: int = 200  # optimizer steps of the cell's per-frame encoder (windows of ENCODER_WINDOW ticks)
    batch_size: int = 16
    window: int = 32  # ticks per training window (about 1 s at 30 Hz)
    hidden: int = 32
    test_episodes: int = 6
    n_boot: int = 2000
    margin: float = 0.05
    cached_features: bool = True
    smoothing_taus_s: tuple[float, ...] = SMOOTHING_TAUS_S

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        self.families = tuple(f for f in self.families if f)
        self.smoothing_taus_s = tuple(float(t) for t in self.smoothing_taus_s)
        if not self.seeds:
            raise ConfigError("StudyConfig: at least one seed is needed.")
        if self.steps < 1 or self.encoder_steps < 1 or self.batch_size < 1 or self.window < 1 or self.hidden < 1:
            raise ConfigError("StudyConfig: steps, encoder_steps, batch_size, window and hidden must be >= 1; got "
                              f"steps={self.steps}, encoder_steps={self.encoder_steps}, batch_size={self.batch_size}, "
                              f"window={self.window}, hidden={self.hidden}.")
        if self.test_episodes < 2 or self.n_boot < 1:
            raise ConfigError(f"StudyConfig: test_episodes must be >= 2 and n_boot >= 1; got {self.test_episodes}, {self.n_boot}.")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"StudyConfig: margin must be in [0, 1); got {self.margin}.")
        if any(not t > 0 for t in self.smoothing_taus_s):
            raise ConfigError(f"StudyConfig: smoothing_taus_s must all be > 0 seconds; got {self.smoothing_taus_s}.")

    @classmethod
    def quick(cls) -> "StudyConfig":
        """The quick default: minutes on 2 CPU cores."""
        return cls()

    @classmethod
    def full(cls) -> "StudyConfig":
        """The whole sweep: three seeds, end-to-end training on frames, larger budgets."""
        return cls(recipe="full", seeds=(0, 1, 2), steps=1500, encoder_steps=1000, batch_size=32, window=64, hidden=64,
                   test_episodes=10, cached_features=False)

    def budget(self) -> dict:
        """The training budget as recorded in results.json."""
        return {k: getattr(self, k) for k in ("steps", "encoder_steps", "batch_size", "window", "hidden", "cached_features")}
