"""PX4 ULog flight logs (.ulg) -> one vector stream per logged topic instance, read with pyulog.

Topics are keyed `<topic>_<instance>` (`sensor_combined_0`; `sensor_accel_0`, `sensor_accel_1`: the
instances of a multi-instance topic stay apart), as PX4's own tools name them; each becomes a stream
of that name whose fields are the topic's numeric fields (`x`, `gyro_rad[0]`, `q[3]`, ...) except
`timestamp`. `t` is the `timestamp` field (the log's microsecond clock since boot) in nanoseconds.
Mapping entries rename a topic (`--map sensor_accel_0=accel`) or pick fields
(`"topic": "sensor_combined_0", "fields": ["gyro_rad[0]", "gyro_rad[1]", "gyro_rad[2]"]`), as for
bags. Values are float32, so integers above 2^24 (device ids, lat/lon in 1e-7 degrees, absolute
`timestamp_sample`) keep about 7 significant digits. PX4 writes NaN for unset values: a field that is
NaN or Inf in every message of a topic instance (e.g. `vehicle_local_position`'s `hagl_min`) is left
out of a stream that takes the topic's fields (noted, and listed in provenance `ulog.<file>.unset_fields`);
a message whose other fields hold NaN/Inf is dropped by the sink and counted (`dropped_nonfinite`). A
mapping entry that picks `fields` keeps those fields; `"allow_nan": true` keeps NaN in the stream, and
`"allow_nan": false` makes a NaN an error naming the message and field. Dropouts and corruption
reported by pyulog are noted and kept in provenance; a log cut short imports up to the cut, as pyulog
reads it.

pyulog parses a log into memory (about the size of the selected topics' data); with
`"include_unmapped": false` only the mapped topics are parsed. Streams are written in blocks.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from seqsense.errors import SeqsenseError
from seqsense.importers.base import ImportJob, Importer, read_head, register_importer
from seqsense.importers.messages import Part
from seqsense.importers.sink import ImportSession, TimedEpisodes

ULOG_MAGIC = b"ULog\x01\x12\x35"
BLOCK_ROWS = 65536
INFO_KEYS = ("sys_name", "ver_hw", "ver_sw", "ver_sw_release", "sys_uuid", "time_ref_utc")


def parse_ulog(path: Path, names: list[str] | None = None):
    """The pyulog ULog of `path` (only topics `names` when given) and what pyulog printed while parsing."""
    from pyulog import ULog

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            log = ULog(str(path), names, disable_str_exceptions=True)
    except OSError as e:
        raise SeqsenseError(f"'{path}': cannot read ({e.strerror}).") from e
    except Exception as e:  # pyulog raises ULogException and struct/index errors on damaged headers
        raise SeqsenseError(f"'{path}': cannot read as a PX4 ULog ({type(e).__name__}: {e}). The file may be "
                            "damaged or not a ULog.") from e
    return log, printed.getvalue().strip()


def topics(log) -> dict[str, dict]:
    """`<topic>_<instance>` -> {name, instance, t_us (N,), fields [names], data {field: (N,)}}."""
    out: dict[str, dict] = {}
    for d in log.data_list:
        key = f"{d.name}_{d.multi_id}"
        fields = [f.field_name for f in d.field_data if f.field_name != "timestamp"
                  and not f.field_name.startswith("_padding")]
        entry = {"name": d.name, "instance": d.multi_id, "t_us": d.data["timestamp"], "fields": fields,
                 "data": {f: d.data[f] for f in fields}}
        if key in out:  # the same instance subscribed twice: one stream, in time order
            prev = out[key]
            t = np.concatenate([prev["t_us"], entry["t_us"]])
            order = np.argsort(t, kind="stable")
            entry = {**prev, "t_us": t[order], "data": {f: np.concatenate([prev["data"][f], entry["data"][f]])[order]
                                                       for f in prev["fields"] if f in entry["data"]}}
            entry["fields"] = list(entry["data"])
        out[key] = entry
    return dict(sorted(out.items()))


def _rate_hz(t_us: np.ndarray) -> float:
    span = float(t_us[-1]) - float(t_us[0]) if len(t_us) > 1 else 0.0
    return (len(t_us) - 1) * 1e6 / span if span > 0 else float("nan")


@register_importer("ulog")
class ULogImporter(Importer):
    """PX4 ULog files; one episode per log, or several with --episode every=S / gap=S."""

    summary = "PX4 ULog flight logs (.ulg), read with pyulog"
    priority = 20

    def detect(self, path: Path) -> bool:
        """A .ulg file or the ULog signature."""
        return path.is_file() and (path.suffix.lower() == ".ulg" or read_head(path, 7) == ULOG_MAGIC)

    def list(self, path: Path, job: ImportJob) -> list[dict]:
        """Every topic instance with its field count, message count and mean rate."""
        log, _ = parse_ulog(path)
        return [{"topic": key, "msgtype": f"{e['name']} ({len(e['fields'])} fields)", "count": len(e["t_us"]),
                 "rate_hz": _rate_hz(e["t_us"]), "supported": True} for key, e in topics(log).items()]

    def import_(self, path: Path, session: ImportSession, job: ImportJob) -> None:
        """Import one log: each selected topic instance in blocks, into the episodes its times fall in."""
        mapping = job.mapping
        mapped = [e for e in mapping.streams if e.get("topic")]
        names = None
        if mapped and not mapping.include_unmapped:
            names = sorted({e["topic"].rsplit("_", 1)[0] for e in mapped})
        log, printed = parse_ulog(path, names)
        found = topics(log)
        for e in mapped:
            if e["topic"] not in found:
                raise SeqsenseError(f"'{path}': --map/--config names topic '{e['topic']}', which the log does not "
                                    f"hold. Topics (<topic>_<instance>): {', '.join(found)}.")
        plan = []  # (stream name, topic key, fields, entry)
        unset: dict[str, list[str]] = {}  # topic key -> fields left out as never set
        for key, topic in found.items():
            entries = mapping.entries_for(key)
            if not entries:
                if not mapping.include_unmapped:
                    session.count("dropped", f"{path.name}:{key}", len(topic["t_us"]))
                    job.provenance.setdefault("skipped_topics", {})[key] = "not in the mapping, include_unmapped is false"
                    continue
                entries = [{"stream": key}]
            for e in entries:
                fields = e.get("fields") or topic["fields"]
                missing = [f for f in fields if f not in topic["data"]]
                if missing:
                    raise SeqsenseError(f"'{path}' topic '{key}': no field(s) {missing}; fields: {topic['fields']}.")
                fields, left_out = self._set_fields(path, key, topic, fields, e)
                if left_out:
                    unset[key] = left_out
                if not fields:
                    session.count("dropped", f"{path.name}:{key}", len(topic["t_us"]))
                    job.provenance.setdefault("skipped_topics", {})[key] = "every field is NaN or Inf (unset)"
                    continue
                plan.append((e["stream"], key, fields, e))
        if not plan:
            raise SeqsenseError(f"'{path}': no topic to import (the log holds no data messages, or the mapping "
                                "selects none).")
        self._note_health(path, log, printed, job)
        if unset:
            job.provenance["ulog"][path.name]["unset_fields"] = unset
            shown = "; ".join(f"{k} {v[:3]}{' ...' if len(v) > 3 else ''}" for k, v in list(unset.items())[:4])
            job.notify(f"'{path}': {len(unset)} topic(s) have fields that are NaN or Inf in every message (PX4's unset "
                       f"values), left out of their streams: {shown}{' ...' if len(unset) > 4 else ''} (all in the "
                       "provenance, ulog.unset_fields).")
        info = {k: log.msg_info_dict[k] for k in INFO_KEYS if k in log.msg_info_dict}
        episodes = TimedEpisodes(session, [found[key]["t_us"].astype(np.int64) * 1000 for _, key, _, _ in plan],
                                 {"source": str(path), "format": "ulog", **info},
                                 {"file": str(path), "format": "ulog"})
        for stream, key, fields, e in plan:
            topic = found[key]
            t_ns = topic["t_us"].astype(np.int64) * 1000  # µs since boot -> ns
            allow_nan = bool(e.get("allow_nan", False))
            names_ = e.get("field_names") or fields
            if len(names_) != len(fields):
                raise SeqsenseError(f"'{path}' topic '{key}': stream '{stream}' has {len(fields)} fields but "
                                    f"{len(names_)} field_names.")
            part = Part("", "vector", (len(fields),), e.get("units", ""), tuple(names_), allow_nan)

            def blocks(topic=topic, fields=fields):
                for i0 in range(0, len(topic["t_us"]), BLOCK_ROWS):
                    yield i0, np.stack([topic["data"][f][i0 : i0 + BLOCK_ROWS] for f in fields], axis=1
                                       ).astype(np.float32)  # (N, D)

            episodes.add_stream(stream, part, t_ns, blocks(), f"{key} in {path.name}", e.get("frame_id", ""),
                                f"'{path}' topic '{key}'")
        episodes.close()

    @staticmethod
    def _set_fields(path, key, topic, fields, entry) -> tuple[list[str], list[str]]:
        """(fields to import, fields left out): PX4's unset fields (NaN/Inf in every message) are left out
        of a stream taking the topic's fields; picked fields and `allow_nan` streams keep every field."""
        nonfinite = {f: ~np.isfinite(topic["data"][f].astype(np.float32)) for f in fields
                     if topic["data"][f].dtype.kind == "f"}  # field -> (N,)
        bad = [f for f, m in nonfinite.items() if m.any()]
        if bad and entry.get("allow_nan") is False:
            f = bad[0]
            i = int(np.flatnonzero(nonfinite[f])[0])
            raise SeqsenseError(f"'{path}' topic '{key}' message {i} field '{f}': {topic['data'][f][i]} is not "
                                "finite, and the mapping says allow_nan false. Drop the field or allow NaN.")
        if entry.get("allow_nan") or entry.get("fields") or not len(topic["t_us"]):
            return list(fields), []
        unset = [f for f in bad if nonfinite[f].all()]
        return [f for f in fields if f not in unset], unset

    @staticmethod
    def _note_health(path: Path, log, printed: str, job: ImportJob) -> None:
        """Dropouts and corruption pyulog found, as notes and provenance."""
        drops = log.dropouts
        health = {"dropouts": len(drops), "dropout_ms": int(sum(d.duration for d in drops)),
                  "file_corruption": bool(log.file_corruption), "pyulog": printed[:2000] or None,
                  "start_timestamp_us": int(log.start_timestamp)}
        job.provenance.setdefault("ulog", {})[path.name] = health
        if drops:
            job.notify(f"'{path}': the logger dropped data {len(drops)} time(s) ({health['dropout_ms']} ms in all); "
                       "streams have gaps there.")
        if log.file_corruption:
            job.notify(f"'{path}': pyulog found corrupt messages and skipped them ({printed or 'no detail'}).")
