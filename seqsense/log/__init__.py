"""The seqsense HDF5 log format: a streaming atomic writer, a lazy reader, and validation."""

from seqsense.log.format import FORMAT_VERSION, ns_to_seconds, seconds_to_ns
from seqsense.log.reader import Episode, Log, Stream, open_log
from seqsense.log.writer import EpisodeWriter, LogWriter, StreamWriter

__all__ = [
    "FORMAT_VERSION",
    "Episode",
    "EpisodeWriter",
    "Log",
    "LogWriter",
    "Stream",
    "StreamWriter",
    "ns_to_seconds",
    "open_log",
    "seconds_to_ns",
]
