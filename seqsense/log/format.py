"""Constants of the seqsense HDF5 log format (see docs/log-format.md)."""

import numpy as np

FORMAT_NAME = "seqsense-log"
FORMAT_VERSION = "1.0"  # major.minor: readers refuse another major, accept any minor
FORMAT_MAJOR = 1
EPISODES_GROUP = "episodes"

# Stream kinds and the dtype / sample rank each one stores.
KIND_DTYPES = {
    "image": np.dtype(np.uint8),  # (H, W, C)
    "vector": np.dtype(np.float32),  # (D,)
    "scalar": np.dtype(np.float32),  # ()
    "label": np.dtype(np.int64),  # () class index
    "event": np.dtype(np.int64),  # () event code
}
KIND_RANKS = {"image": 3, "vector": 1, "scalar": 0, "label": 0, "event": 0}
FLOAT_KINDS = ("vector", "scalar")
DISCRETE_KINDS = ("label", "event")

# Attributes every stream group carries; `fields` is required for vectors as well.
REQUIRED_STREAM_ATTRS = ("kind", "units", "rate_hz", "source", "frame_id")

NS_PER_S = 1_000_000_000


def seconds_to_ns(t_s) -> np.ndarray:
    """Convert seconds (float) to int64 nanoseconds, rounding to the nearest nanosecond."""
    return np.round(np.asarray(t_s, dtype=np.float64) * NS_PER_S).astype(np.int64)


def ns_to_seconds(t_ns) -> np.ndarray:
    """Convert int64 nanoseconds to float64 seconds."""
    return np.asarray(t_ns, dtype=np.int64) / NS_PER_S
