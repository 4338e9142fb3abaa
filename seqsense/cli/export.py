"""Export a trained predictor to ONNX + manifest for robot stacks: RUN_DIR/best becomes OUT/model.onnx
(one streaming step: observations and state in, prediction, variance or class probabilities and next
state out) and OUT/manifest.json (streams, clock, normalization, state layout, config, provenance,
versions). The export checks itself (ONNX checker, then onnxruntime against the torch predictor on
ticks from the training logs, or random valid ticks) before it reports success; OUT is written
atomically and nothing is left there on failure. Load it with `seqsense.runtime.load(OUT)`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `seqsense train` run dir (its best checkpoint) or a checkpoint path")
    p.add_argument("--out", required=True, metavar="DIR", help="export folder to create (must not exist)")
    p.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset version (default 17)")
    p.add_argument("--topic", action="append", default=[], metavar="STREAM=/TOPIC",
                   help="ROS topic of a stream, for the manifest (default: the topic the training log was imported from)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON when done")


def run(args: argparse.Namespace) -> int:
    from seqsense.errors import ConfigError
    from seqsense.export import export_run
    from seqsense.fileio import to_json

    if not 13 <= args.opset <= 21:
        raise ConfigError(f"--opset {args.opset} is outside the supported range 13..21.")
    topics = {}
    for item in args.topic:
        stream, sep, topic = item.partition("=")
        if not sep or not topic:
            raise ConfigError(f"--topic {item!r}: expected STREAM=/TOPIC.")
        topics[stream] = topic
    manifest = export_run(args.run_dir, args.out, opset=args.opset, topics=topics,
                          log=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(to_json(manifest))
    else:
        g = manifest["graph"]
        print(f"{manifest['family']}: {len(g['inputs'])} graph inputs, {len(g['state'])} state tensors, "
              f"opset {g['opset']} -> {args.out}")
    return 0
