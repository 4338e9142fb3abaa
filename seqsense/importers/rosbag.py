"""ROS 1 bags, ROS 2 bags (sqlite3 or MCAP storage) and bare MCAP files, read with `rosbags`.

Messages are read in receive-time order, deserialized by `rosbags`, converted by the registry in
`seqsense.importers.messages` and written through block-buffered sinks, so memory stays bounded by
one block per stream however large the bag is. Stream names default to the topic's last meaningful
component (`/imu/data` -> `imu`, `/husky_velocity_controller/odom` -> `odom`); see
`default_stream_names` for the exact rule.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from seqsense.errors import SeqsenseError
from seqsense.importers.base import ImportJob, Importer, read_head, register_importer
from seqsense.importers.mapping import Mapping
from seqsense.importers.messages import (
    FieldPathConverter,
    make_converter,
    stamp_ns,
    unsupported_message,
)
from seqsense.importers.sink import ImportSession, StreamSink

# Trailing topic components that say nothing about the sensor (`/camera/image_raw` -> `camera`).
GENERIC_COMPONENTS = {"data", "raw", "image", "image_raw", "image_rect", "image_color", "image_rect_color",
                      "compressed", "data_raw", "sample", "msg"}


def open_bag(path: Path):
    """An opened rosbags AnyReader for one bag (SeqsenseError naming the file when unreadable)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        reader.open()
    except SeqsenseError:
        raise
    except Exception as e:  # rosbags raises several types for damaged files
        repair = {".bag": "`rosbag reindex`", ".mcap": "`mcap recover`"}.get(path.suffix, "`ros2 bag reindex`")
        raise SeqsenseError(
            f"'{path}': cannot open as a bag ({type(e).__name__}: {e}). The file may be truncated or "
            f"not a ROS bag; a truncated recording can often be repaired with {repair}."
        ) from e
    return reader


def list_topics(path: Path) -> list[dict]:
    """Topic, type, message count and mean rate of each topic, read from the bag's index only."""
    reader = open_bag(path)
    try:
        duration_s = max(reader.duration, 1) / 1e9 if reader.connections else 0.0
        counts: dict[str, dict] = {}
        for c in reader.connections:
            e = counts.setdefault(c.topic, {"topic": c.topic, "msgtype": c.msgtype, "count": 0})
            e["count"] += c.msgcount
        for e in counts.values():
            e["rate_hz"] = (e["count"] - 1) / duration_s if e["count"] > 1 and duration_s else float("nan")
            e["supported"] = make_converter(e["msgtype"]) is not None
        return sorted(counts.values(), key=lambda e: e["topic"])
    finally:
        reader.close()


def default_stream_names(topics: list[str]) -> dict[str, str]:
    """Stream name per topic: the last component that is not generic (`data`, `image_raw`, ...);
    topics whose short names collide keep their full path without the leading '/'."""
    short = {}
    for topic in topics:
        comps = [c for c in topic.strip("/").split("/") if c]
        meaningful = [c for c in comps if c.lower() not in GENERIC_COMPONENTS]
        short[topic] = (meaningful or comps or ["stream"])[-1]
    names = {}
    for topic, name in short.items():
        clash = sum(1 for n in short.values() if n == name) > 1
        names[topic] = topic.strip("/") if clash else name
    return names


class _Handler:
    """One (converter, stream base name) pair of a topic: its sinks in the current episode and the
    messages being converted on a thread pool (images decode in parallel; results land in order)."""

    def __init__(self, topic: str, converter, base: str):
        self.topic = topic
        self.converter = converter
        self.base = base
        self.parts = None
        self.sinks: list[StreamSink] = []
        self.pending: list[tuple] = []  # (t_ns, future of the converted samples, message index)

    def submit(self, pool, t: int, msg, i: int, where: str) -> None:
        """Start converting `msg` on the pool; append the oldest results once `batch` are in flight."""
        self.pending.append((t, pool.submit(self._safe_convert, msg), i))
        if len(self.pending) > self.converter.batch:
            self._drain(len(self.pending) - self.converter.batch, where)

    def flush(self, where: str) -> None:
        """Wait for every message in flight and append the results in order."""
        self._drain(len(self.pending), where)

    def _drain(self, n: int, where: str) -> None:
        done, self.pending = self.pending[:n], self.pending[n:]
        for t, future, i in done:
            out = future.result()
            if isinstance(out, Exception):
                self.pending = []
                raise SeqsenseError(f"{where} message {i}: {out}. Nothing was written.") from out
            for sink, sample in zip(self.sinks, out):
                sink.add(t, sample, i)

    def _safe_convert(self, msg):
        try:
            return self.converter.convert(msg)
        except Exception as e:  # reported with the message index by _drain()
            return e


def plan_topics(topics: dict[str, str], mapping: Mapping, image_size, notify: Callable) -> tuple[dict, dict]:
    """Handlers per topic from the mapping and defaults; and the skipped topics with the reason."""
    for entry in mapping.streams:
        if entry["topic"] not in topics:
            raise SeqsenseError(
                f"--map/--config names topic '{entry['topic']}', which no input holds. "
                f"Topics: {', '.join(sorted(topics))}."
            )
    names = default_stream_names(sorted(topics))
    plan, skipped = {}, {}
    for topic, msgtype in topics.items():
        entries = mapping.entries_for(topic)
        if not entries:
            if not mapping.include_unmapped:
                skipped[topic] = "not in the mapping, include_unmapped is false"
                continue
            entries = [{"stream": names[topic]}]
        handlers = []
        for e in entries:
            if e.get("fields"):
                conv = FieldPathConverter(e["fields"], e.get("field_names"), e.get("units", ""),
                                          bool(e.get("allow_nan", False)))
            else:
                conv = make_converter(msgtype, image_size)
                if conv is None:
                    if e is entries[0] and not mapping.entries_for(topic):
                        skipped[topic] = "unsupported type"
                        notify(f"skipping {unsupported_message(topic, msgtype)}")
                        break
                    raise SeqsenseError(unsupported_message(topic, msgtype))
            handlers.append(_Handler(topic, conv, e["stream"]))
        if handlers:
            plan[topic] = handlers
    return plan, skipped


def import_bag(path: Path, plan: dict, session: ImportSession, fmt: str) -> None:
    """Import one bag into `session`: one episode, or several when --episode gap=S / every=S splits it
    (by receive time, so a split never depends on header stamps)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    opts = session.options
    reader = open_bag(path)
    name = path.name
    for c in reader.connections:
        if c.topic not in plan:
            session.count("dropped", f"{name}:{c.topic}", c.msgcount)
    conns = [c for c in reader.connections if c.topic in plan]
    handlers = [h for hs in plan.values() for h in hs]
    index = {t: 0 for t in plan}
    episode, sinks, last_recv, episode_start, topic, i = None, [], None, 0, "", -1
    bar = tqdm(total=sum(c.msgcount for c in conns), unit="msg", desc=name, disable=not opts.progress,
               file=sys.stderr, mininterval=0.5, leave=False)
    # OpenCV releases the GIL while decoding, so images decode on all cores while this thread reads.
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))

    def flush_all():
        for h in handlers:
            h.flush(f"'{path}' topic '{h.topic}'")

    try:
        for conn, t_recv, raw in reader.messages(connections=conns):
            topic = conn.topic
            i = index[topic]
            index[topic] = i + 1
            if i % 256 == 0:
                bar.update(sum(index.values()) - bar.n)
            if (episode is None or (opts.gap_ns is not None and t_recv - last_recv > opts.gap_ns)
                    or (opts.every_ns is not None and t_recv - episode_start >= opts.every_ns)):
                if episode is not None:
                    flush_all()
                    session.close_episode(sinks)
                segment = sum(1 for e in session.sources if e["file"] == str(path))
                episode = session.new_episode({"source": str(path), "format": fmt, "segment": segment,
                                               "first_receive_ns": int(t_recv)})
                session.sources.append({"file": str(path), "format": fmt, "episode": episode.name})
                sinks, episode_start = [], t_recv
                for h in handlers:
                    h.sinks = []
            last_recv = t_recv
            msg = reader.deserialize(raw, conn.msgtype)
            t = stamp_ns(msg) if opts.time == "header" else None
            if t is None:
                if opts.time == "header":
                    session.count("stamp_fallback_receive", f"{name}:{topic}")
                t = t_recv
            for h in plan[topic]:
                if h.parts is None:
                    h.parts = h.converter.parts(msg)
                if not h.sinks:
                    frame = str(getattr(getattr(msg, "header", None), "frame_id", ""))
                    h.sinks = [StreamSink(session, episode, h.base if not p.suffix else f"{h.base}/{p.suffix}", p,
                                          f"{topic} in {name}", p.attrs.get("frame_id", frame),
                                          f"'{path}' topic '{topic}'") for p in h.parts]
                    sinks.extend(h.sinks)
                if h.converter.batch > 1:
                    h.submit(pool, t, msg, i, f"'{path}' topic '{topic}'")
                else:
                    for sink, sample in zip(h.sinks, h.converter.convert(msg)):
                        sink.add(t, sample, i)
        flush_all()
    except SeqsenseError:
        raise
    except Exception as e:  # deserialization, decoding or reading errors from a damaged bag
        where = f"topic '{topic}' message {i}" if topic else "before the first message"
        raise SeqsenseError(f"'{path}' {where}: {type(e).__name__}: {e}. Nothing was written.") from e
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        reader.close()
    if episode is not None:
        session.close_episode(sinks)


class _BagImporter(Importer):
    """Bags read with rosbags: the topic plan is made once for all inputs, then each bag is one episode
    (or several with --episode gap=S / every=S)."""

    family = "rosbag"

    def list(self, path: Path, job: ImportJob) -> list[dict]:
        """Topics with their type, count and mean rate, from the bag's index."""
        return list_topics(path)

    def prepare(self, paths: list[Path], job: ImportJob) -> None:
        """One handler plan for the topics of every input (a topic must have one type in all of them)."""
        topics: dict[str, str] = {}
        for p in paths:
            listing = list_topics(p)
            if sum(e["count"] for e in listing) == 0:
                raise SeqsenseError(f"'{p}': the bag holds no messages (empty bag; topics: "
                                    f"{[e['topic'] for e in listing] or 'none'}).")
            for e in listing:
                if topics.setdefault(e["topic"], e["msgtype"]) != e["msgtype"]:
                    raise SeqsenseError(f"'{p}': topic '{e['topic']}' has type {e['msgtype']} here but "
                                        f"{topics[e['topic']]} in an earlier input; import them separately.")
        plan, skipped = plan_topics(topics, job.mapping, job.options.image_size, job.notify)
        job.plan["topics"] = plan
        job.provenance["skipped_topics"] = skipped
        import rosbags

        job.provenance["rosbags_version"] = getattr(rosbags, "__version__", None) or _dist_version("rosbags")

    def import_(self, path: Path, session: ImportSession, job: ImportJob) -> None:
        """Import one bag with the plan made by prepare()."""
        import_bag(path, job.plan["topics"], session, self.name)


@register_importer("rosbag1")
class Rosbag1Importer(_BagImporter):
    """ROS 1 bags."""

    summary = "ROS 1 bags (.bag)"
    priority = 10

    def detect(self, path: Path) -> bool:
        """A .bag file or the #ROSBAG signature."""
        return path.is_file() and (path.suffix.lower() == ".bag" or read_head(path, 7) == b"#ROSBAG")


@register_importer("mcap")
class McapImporter(_BagImporter):
    """Bare MCAP files (ROS 2 messages)."""

    summary = "MCAP files (.mcap)"
    priority = 10

    def detect(self, path: Path) -> bool:
        """A .mcap file or the MCAP signature."""
        return path.is_file() and (path.suffix.lower() == ".mcap" or read_head(path, 5) == b"\x89MCAP")


@register_importer("rosbag2")
class Rosbag2Importer(_BagImporter):
    """ROS 2 bag folders (sqlite3 or MCAP storage) and bare .db3 files."""

    summary = "ROS 2 bag folders (metadata.yaml, .db3 or .mcap inside) and .db3 files"
    priority = 10

    def detect(self, path: Path) -> bool:
        """A folder with metadata.yaml / .db3 / .mcap inside, or a .db3 file."""
        if path.is_dir():
            return (path / "metadata.yaml").exists() or any(path.glob("*.db3")) or any(path.glob("*.mcap"))
        return path.suffix.lower() == ".db3"


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
