"""Import mappings: which source item (topic, HDF5 array, CSV columns) becomes which stream.

A mapping is a JSON file (`--config FILE`, examples in `datasets/mappings/`) plus `--map` entries on
the command line, which are appended to the file's entries:

    {"description": "...", "format": "rosbag",
     "include_unmapped": true,
     "options": {"time": "header", "episode": "per-file"},
     "streams": [{"topic": "/imu/data", "stream": "imu"},
                 {"topic": "/odom", "stream": "odom_vel", "fields": ["twist.twist.linear.x"],
                  "field_names": ["vx"], "units": "m/s"}]}

`--map` forms: `TOPIC=STREAM` (rename the topic's streams; also a ULog topic such as
`sensor_accel_0=accel` or a dataset folder's stream such as `cam0=camera`), `TOPIC:PATH,PATH=STREAM`
(a vector of numeric fields: message field paths, or ULog fields such as
`sensor_combined_0:gyro_rad[0],gyro_rad[1]=gyro`), and for HDF5 / table sources `ARRAY,ARRAY=STREAM` /
`COLUMN,COLUMN=STREAM`. Per-format settings (`time_column`, `time_unit`, `delimiter`, `header_rows`,
`column_names`, `fps`, `frame_times`, `annotations`, ...) go at the top level or under "options". A topic
named by any entry gives exactly the streams its entries name; other topics are imported with their
default names when `include_unmapped` is true (the default) and skipped (and counted) otherwise.

An optional `"derive"` list names standard targets computed from the imported streams (see
`seqsense.derive`), as objects or in the `seqsense derive --add` form:

    "derive": [{"stream": "truth/gravity_body", "function": "gravity_body", "source": "truth/orientation"},
               "truth/velocity=velocity(truth/position, method=central)"]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from seqsense.derive import DeriveSpec, spec_from_entry
from seqsense.errors import ConfigError

OPTION_KEYS = ("time", "episode", "sort_time", "image_size", "fps", "frame_times", "time_unit", "time_column",
               "delimiter", "header_rows", "decimal", "annotations")
ENTRY_KEYS = {"topic", "stream", "fields", "field_names", "units", "allow_nan", "arrays", "columns",
              "kind", "frame_id", "description"}


@dataclasses.dataclass
class Mapping:
    """A parsed mapping: stream entries, source-specific settings and default import options."""

    streams: list[dict] = dataclasses.field(default_factory=list)
    include_unmapped: bool = True
    options: dict = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)  # source-specific (rate_attr, time_column...)
    path: str | None = None
    derive: list[DeriveSpec] = dataclasses.field(default_factory=list)  # streams computed after import

    def to_dict(self) -> dict:
        """A JSON-ready form, stored in the log's provenance."""
        return {"file": self.path, "include_unmapped": self.include_unmapped, "options": self.options,
                "settings": self.settings, "streams": self.streams, "derive": [d.to_dict() for d in self.derive]}

    def entries_for(self, key: str) -> list[dict]:
        """The entries whose topic is `key`."""
        return [e for e in self.streams if e.get("topic") == key]


def _check_entry(entry, where: str) -> dict:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each stream entry must be a JSON object, got {entry!r}.")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} in entry {entry}; valid keys: {sorted(ENTRY_KEYS)}.")
    if not entry.get("stream"):
        raise ConfigError(f"{where}: entry {entry} has no 'stream' name.")
    for key in ("fields", "field_names", "arrays", "columns"):
        if key in entry and not (isinstance(entry[key], list) and all(isinstance(v, str) for v in entry[key])):
            raise ConfigError(f"{where}: '{key}' must be a list of strings in entry {entry}.")
    return dict(entry)


def load_mapping(path: str | Path | None) -> Mapping:
    """Read a mapping file (ConfigError naming the file on bad JSON or unknown keys)."""
    if path is None:
        return Mapping()
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"Cannot read mapping file '{path}': {e.strerror}.") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"Mapping file '{path}' is not valid JSON: {e}.") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"Mapping file '{path}' must hold a JSON object.")
    known = {"description", "format", "include_unmapped", "options", "streams", "source", "derive"}
    options = raw.get("options", {})
    unknown_opts = set(options) - set(OPTION_KEYS)
    if unknown_opts:
        raise ConfigError(f"Mapping file '{path}': unknown option(s) {sorted(unknown_opts)}; valid: {list(OPTION_KEYS)}.")
    settings = {k: v for k, v in raw.items() if k not in known}
    settings["format"] = raw.get("format")
    derive = raw.get("derive", [])
    if not isinstance(derive, list):
        raise ConfigError(f"Mapping file '{path}': \"derive\" must be a list of derive entries, got {derive!r}.")
    return Mapping(
        streams=[_check_entry(e, f"Mapping file '{path}'") for e in raw.get("streams", [])],
        include_unmapped=bool(raw.get("include_unmapped", True)),
        options=dict(options),
        settings=settings,
        path=str(path),
        derive=[spec_from_entry(d, f"Mapping file '{path}'") for d in derive],
    )


def parse_map_arg(spec: str) -> dict:
    """One `--map` value -> a mapping entry (ConfigError with the accepted forms on bad syntax)."""
    forms = "TOPIC=STREAM, TOPIC:FIELD.PATH,FIELD.PATH=STREAM, or ARRAY|COLUMN[,...]=STREAM"
    if "=" not in spec:
        raise ConfigError(f"--map {spec!r}: expected {forms}.")
    left, stream = spec.rsplit("=", 1)
    left, stream = left.strip(), stream.strip()
    if not left or not stream:
        raise ConfigError(f"--map {spec!r}: expected {forms}.")
    if left.startswith("/") or ":" in left:
        topic, _, paths = left.partition(":")
        entry = {"topic": topic, "stream": stream}
        if paths:
            entry["fields"] = [p.strip() for p in paths.split(",") if p.strip()]
        return entry
    # Not a ROS topic: HDF5 arrays or CSV columns; the source decides which.
    names = [n.strip() for n in left.split(",") if n.strip()]
    return {"topic": left, "stream": stream, "arrays": names, "columns": names}


def build_mapping(config: str | None, maps: list[str] | None) -> Mapping:
    """The mapping file (if any) with the `--map` entries appended."""
    mapping = load_mapping(config)
    mapping.streams.extend(parse_map_arg(m) for m in maps or [])
    return mapping
