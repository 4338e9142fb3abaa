"""Convert recorded logs to one seqsense log: ROS 1 bags, ROS 2 bags (sqlite3 or MCAP), MCAP files,
PX4 ULog flight logs, image-sequence datasets (EuRoC/ASL, TUM RGB-D, a folder of images with frame
times or --fps and optional OTB/VOT boxes), a video plus a CSV of frame times, tables (CSV, ';' or
tab or whitespace separated, 0-2 header rows), or arrays in a generic HDF5 file. The format is
detected from each input's name and content (--format names it). Each input becomes an episode
(ep_000, ep_001, ...; or split with --episode gap=SECONDS or every=SECONDS). Streams are named after
their topic (/imu/data -> imu; Odometry gives odom/pose and odom/twist; ULog sensor_accel_0); rename
or pick numeric fields with --map, or use a mapping file (--config; examples in datasets/mappings/).
--list shows what the inputs hold without converting. The output is written atomically."""

from __future__ import annotations

import argparse
import math


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options of `seqsense import`."""
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="bag files/folders, .mcap, .ulg, dataset or image folders, videos, tables (.csv, .txt), .h5 files")
    p.add_argument("--format", default=None, metavar="NAME",
                   help="the inputs' format instead of detecting it (an unknown name lists the formats)")
    p.add_argument("--out", metavar="LOG.h5", help="the seqsense log to write (required unless --list)")
    p.add_argument("--list", action="store_true", help="print topics, types, counts and rates; convert nothing")
    p.add_argument("--map", action="append", default=[], metavar="TOPIC=STREAM",
                   help="TOPIC=STREAM renames a topic's streams; TOPIC:PATH,PATH=STREAM imports numeric fields "
                        "(e.g. /odom:twist.twist.linear.x,twist.twist.angular.z=odom_vel); ARRAY,ARRAY=STREAM "
                        "or COLUMN,COLUMN=STREAM for HDF5 / CSV inputs. Repeatable.")
    p.add_argument("--config", metavar="FILE", help="a JSON mapping file (see datasets/mappings/)")
    p.add_argument("--episode", default=None, metavar="per-file|gap=S|every=S",
                   help="one episode per input (default); gap=SECONDS starts a new one after every receive-time "
                        "gap longer than SECONDS; every=SECONDS cuts episodes of SECONDS each (bags, ULog, "
                        "dataset and image folders, tables, generic HDF5 files)")
    p.add_argument("--time", choices=["header", "receive"], default=None,
                   help="timestamps from the message header stamp (default) or the bag's receive time")
    p.add_argument("--sort-time", action="store_true", default=None,
                   help="sort each stream by time when stamps go backwards (otherwise that is an error)")
    p.add_argument("--image-size", metavar="WxH", default=None, help="resize every image to W x H pixels")
    p.add_argument("--frame-times", metavar="FILE", default=None,
                   help="video and image-folder inputs: a table of frame timestamps (one per frame, or 'time filename')")
    p.add_argument("--fps", type=float, default=None,
                   help="video and image-folder inputs: fixed frame rate when there is no frame-time file")
    p.add_argument("--annotations", metavar="FILE", default=None,
                   help="image-folder inputs: per-frame boxes (OTB x,y,w,h or VOT 8-value polygons)")
    p.add_argument("--delimiter", default=None, metavar="D",
                   help="tables: ',' ';' tab or space (runs of whitespace); sniffed by default")
    p.add_argument("--header-rows", type=int, choices=[0, 1, 2], default=None,
                   help="tables: header rows above the data (2: groups over fields); detected by default")
    p.add_argument("--time-column", default=None, metavar="NAME", help="tables: the time column's name")
    p.add_argument("--time-unit", choices=["s", "ms", "us", "ns"], default=None,
                   help="tables and frame-time files: the time column's unit when its name does not say it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _image_size(text):
    from seqsense.errors import SeqsenseError

    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return int(text[0]), int(text[1])
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
        if w > 0 and h > 0:
            return w, h
    except ValueError:
        pass
    raise SeqsenseError(f"--image-size {text!r}: expected WxH in pixels, e.g. 160x120.")


def _print_listing(listing: list[dict]) -> None:
    from seqsense.importers import IMPORTERS
    from seqsense.importers.messages import supported_types

    unsupported = False
    for src in listing:
        bag = IMPORTERS[src["format"]].family == "rosbag"
        print(f"{src['file']}  ({src['format']})")
        print(f"  {'topic':<40} {'type':<36} {'count':>8} {'rate Hz':>8}")
        for it in src["items"]:
            rate = "-" if math.isnan(it["rate_hz"]) else f"{it['rate_hz']:.3g}"
            mark = "" if it["supported"] else ("  (unsupported: map fields with --map)" if bag else "  (not imported)")
            unsupported |= bag and not it["supported"]
            print(f"  {it['topic']:<40} {it['msgtype'].replace('/msg/', '/'):<36} {it['count']:>8} {rate:>8}{mark}")
    if unsupported:
        print(f"supported message types: {', '.join(supported_types())}")


def _settings(args: argparse.Namespace) -> dict:
    """The per-format settings given on the command line (None: not given)."""
    return {"frame_times": args.frame_times, "fps": args.fps, "annotations": args.annotations,
            "delimiter": args.delimiter, "header_rows": args.header_rows, "time_column": args.time_column,
            "time_unit": args.time_unit}


def run(args: argparse.Namespace) -> int:
    """List or import the sources; returns the exit code."""
    from seqsense.errors import SeqsenseError
    from seqsense.importers import ImportOptions, build_mapping, import_sources, list_sources

    mapping = build_mapping(args.config, args.map)
    if args.list:
        _print_listing(list_sources(args.sources, mapping, _settings(args), args.format))
        return 0
    if not args.out:
        raise SeqsenseError("--out LOG.h5 is required (or use --list to see what the inputs hold).")
    opts = mapping.options

    def pick(cli, key, default):
        return cli if cli is not None else opts.get(key, default)

    options = ImportOptions(
        time=pick(args.time, "time", "header"),
        episode=pick(args.episode, "episode", "per-file"),
        sort_time=bool(pick(args.sort_time, "sort_time", False)),
        image_size=_image_size(pick(args.image_size, "image_size", None)),
        progress=not args.no_progress,
    )
    out = import_sources(args.sources, args.out, mapping, options, settings=_settings(args), format=args.format)
    from seqsense.log import open_log

    log = open_log(out)
    n_streams = len({s for ep in log.episodes() for s in ep.stream_names})
    print(f"wrote {out}: {len(log.episode_names)} episode(s), {n_streams} stream(s); "
          f"see `seqsense inspect {out}`")
    log.close()
    return 0
