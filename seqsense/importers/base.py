"""The importer registry: one class per source format behind one signature, and format detection.

An importer is a subclass of `Importer` registered by name with `@register_importer("name")`, plus one
import line in `seqsense/importers/__init__.py`. It answers four questions about a source path:

- `detect(path) -> bool`: is this my format? (by name and content; no side effects);
- `list(path, job) -> [row]`: what does it hold? One summary row per topic / column / stream:
  `{"topic": str, "msgtype": str, "count": int, "rate_hz": float (NaN if unknown), "supported": bool}`;
- `prepare(paths, job) -> None`: anything decided once for all inputs (e.g. a bag's topic plan), kept
  in `job.plan`, with extra file provenance in `job.provenance`;
- `import_(path, session, job) -> None`: write the source's episodes through the `ImportSession`
  (block-buffered `StreamSink`s; the session makes the output atomic).

`detect_format` asks the importers in `priority` order (specific layouts first, the generic
fallbacks last: folders of images, text tables), so detection lives here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from seqsense.errors import SeqsenseError
from seqsense.importers.mapping import Mapping
from seqsense.importers.sink import ImportOptions

IMPORTERS: dict[str, "Importer"] = {}  # name -> importer instance, in registration order


@dataclasses.dataclass
class ImportJob:
    """What one import or listing was asked for: the mapping, per-format settings and where notes go.

    `settings` merges, in decreasing precedence, the command-line flags (--fps, --delimiter, ...), the
    mapping file's "options" and its other top-level keys (time_column, rate_attr, ...).
    """

    mapping: Mapping = dataclasses.field(default_factory=Mapping)
    settings: dict = dataclasses.field(default_factory=dict)
    notify: Callable[[str], None] = print
    options: ImportOptions = dataclasses.field(default_factory=ImportOptions)
    plan: dict = dataclasses.field(default_factory=dict)  # decided by prepare() for all inputs
    provenance: dict = dataclasses.field(default_factory=dict)  # extra file provenance

    @classmethod
    def build(cls, mapping: Mapping | None = None, settings: dict | None = None,
              notify: Callable[[str], None] = print, options: ImportOptions | None = None) -> "ImportJob":
        """A job whose settings are `settings` (non-None values) over the mapping's options and settings."""
        mapping = mapping or Mapping()
        merged = {**mapping.settings, **mapping.options,
                  **{k: v for k, v in (settings or {}).items() if v is not None}}
        return cls(mapping, merged, notify, options or ImportOptions(progress=False))


class Importer:
    """One source format: detection, listing and conversion. Subclasses own no state between calls."""

    name = ""  # set by @register_importer
    family = ""  # inputs of one family import together; also the provenance's importer name
    summary = ""  # one line: what it reads (shown when a format is unknown)
    priority = 50  # detection order: lower is asked first; generic fallbacks are high

    def detect(self, path: Path) -> bool:
        """Whether `path` is a source of this format (by name and content)."""
        raise NotImplementedError

    def list(self, path: Path, job: ImportJob) -> list[dict]:
        """Summary rows of what the source holds (topic, msgtype, count, rate_hz, supported)."""
        raise NotImplementedError

    def prepare(self, paths: list[Path], job: ImportJob) -> None:
        """Decide what is shared by all inputs before any is imported (default: nothing)."""

    def import_(self, path: Path, session, job: ImportJob) -> None:
        """Convert one source into episodes of `session` (an `ImportSession`)."""
        raise NotImplementedError


def register_importer(name: str) -> Callable[[type], type]:
    """Class decorator adding an Importer subclass to the registry under `name`."""

    def deco(cls: type) -> type:
        cls.name = name
        cls.family = cls.family or name
        IMPORTERS[name] = cls()
        return cls

    return deco


def formats_text() -> str:
    """The registered formats with one line each, for error messages."""
    return "; ".join(f"{imp.name} ({imp.summary})" for imp in _ordered())


def _ordered() -> list[Importer]:
    return sorted(IMPORTERS.values(), key=lambda imp: imp.priority)


def get_importer(name: str) -> Importer:
    """The importer registered as `name`; the error lists the valid names."""
    if name not in IMPORTERS:
        raise SeqsenseError(f"unknown import format {name!r}; valid formats: {', '.join(sorted(IMPORTERS))}.")
    return IMPORTERS[name]


def detect_format(path: str | Path, forced: str | None = None) -> str:
    """The name of the format of `path` (`forced` skips detection); SeqsenseError listing the formats."""
    p = Path(path)
    if not p.exists():
        raise SeqsenseError(f"'{p}' does not exist.")
    if forced:
        return get_importer(forced).name
    for imp in _ordered():
        if imp.detect(p):
            return imp.name
    kind = "folder" if p.is_dir() else "file"
    raise SeqsenseError(f"'{p}': cannot tell the format of this {kind} from its name or content. Supported "
                        f"formats: {formats_text()}. Name one with --format NAME if it is one of these.")


def read_head(path: Path, n: int = 16) -> bytes:
    """The first `n` bytes of a file (b'' for folders and unreadable files)."""
    if not path.is_file():
        return b""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""
