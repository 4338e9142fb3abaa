"""The study: when does a machine consumer need memory, and which family pays off?

Parts: `config` (what to sweep, budgets in steps), `cell` (one cell × seed: logs, encoder and
features, each family and its memoryless twin, smoothing tuned on validation, test replays, oracle),
`aggregate` (memory and consistency gains, verdicts, controls), `executor` (local processes or Ray),
`runner` (the sweep, results.json and the report). Names load on first use, so a worker process
that imports `seqsense.study.executor` does not pay for torch until a unit needs it.
"""

import importlib

_NAMES = {
    "Study": "seqsense.study.runner",
    "machine_info": "seqsense.study.runner",
    "registered_families": "seqsense.study.runner",
    "StudyConfig": "seqsense.study.config",
    "summarize_cell": "seqsense.study.aggregate",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'seqsense.study' has no attribute {name!r}")
