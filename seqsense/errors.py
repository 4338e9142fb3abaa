"""The few exception types seqsense raises for bad input; the CLI turns them into exit code 2."""


class SeqsenseError(Exception):
    """Bad input or usage: the message says what, where, and how to fix it."""


class LogFormatError(SeqsenseError, ValueError):
    """A log file that is not a readable seqsense log (wrong version, missing structure)."""


class ConfigError(SeqsenseError, ValueError):
    """A configuration key or value that is unknown, of the wrong type or out of range."""


class CheckpointError(SeqsenseError, ValueError):
    """A checkpoint or export folder that is missing, truncated or inconsistent."""
