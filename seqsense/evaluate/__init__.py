"""The evaluator's building blocks: metrics, machine consumers, jitter/lag wrappers and the verdict.

Everything here works on numpy arrays of one replayed sequence (`t_s (N,)`, `y (N, D)`), so the
replay and the study only need to collect predictions and call these functions.
"""

from seqsense.evaluate.consumers import (
    CONSUMERS,
    Consumer,
    InterceptPlanner,
    SafetyMonitor,
    TrackingController,
    consumer_names,
    make_consumer,
    register_consumer,
    run,
)
from seqsense.evaluate.metrics import latency_summary, sequence_metrics
from seqsense.evaluate.verdict import PairedGain, paired_gain, rank_agreement, which_pays
from seqsense.evaluate.wrappers import (
    ExponentialSmoothing,
    TemporalEnsemble,
    exponential_smoothing,
    temporal_ensemble,
)

__all__ = [
    "CONSUMERS", "Consumer", "InterceptPlanner", "SafetyMonitor", "TrackingController", "consumer_names",
    "make_consumer", "register_consumer", "run", "latency_summary", "sequence_metrics", "PairedGain",
    "paired_gain", "rank_agreement", "which_pays", "ExponentialSmoothing", "TemporalEnsemble", "exponential_smoothing",
    "temporal_ensemble",
]
