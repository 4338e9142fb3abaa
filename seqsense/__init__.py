"""seqsense: measure how much temporal modeling a robot's perception needs, and ship the answer."""

__version__ = "0.1.0"
