"""Model families behind one streaming interface; importing this package registers them all."""

from seqsense.models.base import MODELS, ModelConfig, SequenceModel, get_model_class, register_model

# One import line per family (each module registers itself).

__all__ = ["MODELS", "ModelConfig", "SequenceModel", "get_model_class", "register_model"]
