"""Model families behind one streaming interface; importing this package registers them all."""

from seqsense.models.base import MODELS, ModelConfig, SequenceModel, get_model_class, register_model

# One import line per family (each module registers itself).
import seqsense.models.ekf  # noqa: E402,F401
import seqsense.models.framewise  # noqa: E402,F401
import seqsense.models.gp  # noqa: E402,F401
import seqsense.models.hybrid  # noqa: E402,F401
import seqsense.models.kalman  # noqa: E402,F401
import seqsense.models.rnn  # noqa: E402,F401
import seqsense.models.transformer  # noqa: E402,F401

__all__ = ["MODELS", "ModelConfig", "SequenceModel", "get_model_class", "register_model"]
