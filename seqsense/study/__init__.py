"""The study: when does a machine consumer need memory, and which family pays off? (see `runner`)."""

from seqsense.study.runner import Study, StudyConfig, machine_info, summarize_cell, write_json_atomic

__all__ = ["Study", "StudyConfig", "machine_info", "summarize_cell", "write_json_atomic"]
