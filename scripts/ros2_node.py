"""ROS 2 node running an exported seqsense predictor: subscribe to the manifest's topics, publish predictions.

    python scripts/ros2_node.py EXPORT_DIR [--topic STREAM=/TOPIC[:pkg/msg/Type]] [--rate HZ]

Messages become stream samples through the importer's converters (`seqsense.importers.messages`), so
a model trained on an imported bag sees the same numbers live. The manifest names each stream's
topic when the training log came from a bag; `--topic` sets or overrides it (and the message type,
otherwise asked of the ROS graph). The node steps the predictor on each message of the clock stream
when that stream is an input, else on a timer at the manifest's rate (or `--rate`). It publishes
`~/prediction` (std_msgs/Float64MultiArray: mean then variance, or class probabilities) and, for
targets of 2 or 3 values, `~/pose` (geometry_msgs/PoseWithCovarianceStamped: position = mean,
covariance diagonal = variance; orientation unknown, variance 1e6).

`TickAdapter` holds the message -> tick logic without any ROS import, so it runs (and is tested)
offline on messages deserialized by `rosbags`; rclpy is imported only inside `main`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

UNKNOWN_VAR = 1e6  # covariance of pose components the model does not predict


def _stamp_ns(msg: Any, fallback_ns: int) -> int:
    from seqsense.importers.messages import stamp_ns

    t = stamp_ns(msg)
    return fallback_ns if t is None else t


class TickAdapter:
    """Owns one converter per topic and the samples received since the last tick; builds runtime observations."""

    def __init__(self, manifest: dict, topics: dict[str, str] | None = None, msgtypes: dict[str, str] | None = None):
        self.manifest = manifest
        self.streams = {s: info for s, info in manifest["streams"].items()}
        self.topic_of = {s: (topics or {}).get(s) or info.get("topic") or "" for s, info in self.streams.items()}
        missing = [s for s, t in self.topic_of.items() if not t]
        if missing:
            raise ValueError(f"No topic known for stream(s) {missing}: the training log did not come from a bag. "
                             f"Pass --topic {missing[0]}=/TOPIC for each.")
        self.msgtypes = dict(msgtypes or {})
        self.converters: dict[str, Any] = {}
        self.parts: dict[str, list[tuple[int, str]]] = {}  # topic -> [(part index, stream)]
        self.pending: dict[str, list[tuple[int, np.ndarray]]] = {s: [] for s in self.streams}

    def topics(self) -> dict[str, list[str]]:
        """Topic -> the manifest streams it feeds."""
        out: dict[str, list[str]] = {}
        for s, t in self.topic_of.items():
            out.setdefault(t, []).append(s)
        return out

    def _plan(self, topic: str, msgtype: str, msg: Any) -> None:
        from seqsense.importers.messages import make_converter

        image = [s for s in self.topics()[topic] if self.streams[s]["kind"] == "image"]
        size = None
        if image:
            h, w = self.streams[image[0]]["shape"][:2]
            size = (int(w), int(h))
        conv = make_converter(msgtype, image_size=size)
        if conv is None:
            raise ValueError(f"Topic '{topic}' has type {msgtype}, which has no converter in seqsense.importers.")
        parts = conv.parts(msg)
        chosen = []
        for s in self.topics()[topic]:
            by_suffix = [i for i, p in enumerate(parts) if p.suffix and s.endswith("/" + p.suffix)]
            plain = [i for i, p in enumerate(parts) if not p.suffix]
            pick = (by_suffix or plain or [None])[0]
            if pick is None:
                raise ValueError(f"Topic '{topic}' ({msgtype}) yields parts {[p.suffix for p in parts]}; none feeds stream '{s}'.")
            chosen.append((pick, s))
        self.converters[topic], self.parts[topic] = conv, chosen

    def on_message(self, topic: str, msgtype: str, msg: Any, receive_ns: int) -> list[str]:
        """Convert one message into samples of the streams it feeds; returns those stream names."""
        if topic not in self.converters:
            self._plan(topic, msgtype, msg)
        t = _stamp_ns(msg, receive_ns)
        samples = self.converters[topic].convert(msg)
        fed = []
        for i, s in self.parts[topic]:
            dtype = np.uint8 if self.streams[s]["kind"] == "image" else np.float32
            x = np.asarray(samples[i], dtype).reshape(self.streams[s]["shape"])
            self.pending[s].append((t, x))
            fed.append(s)
        return fed

    def observations(self, t_ns: int) -> dict[str, Any]:
        """`step(t_ns, observations)` input from the samples stamped at or before `t_ns`, with their stamps (the rest wait)."""
        obs: dict[str, Any] = {}
        for s, info in self.streams.items():
            ready = [(t, x) for t, x in self.pending[s] if t <= t_ns]
            self.pending[s] = [(t, x) for t, x in self.pending[s] if t > t_ns]
            if info.get("mode") == "packed":
                obs[s] = np.stack([x for _, x in ready]) if ready else None
                obs[f"{s}_t_ns"] = np.asarray([t for t, _ in ready], np.int64)
            elif ready:
                t, x = ready[-1]
                obs[s], obs[f"{s}_t_ns"] = x, t
            else:
                obs[s] = None
        return obs


def prediction_arrays(pred) -> tuple[list[float], list[float] | None]:
    """(mean or probs, variance or None) of a Prediction as plain lists for messages."""
    if pred.probs is not None:
        return [float(v) for v in pred.probs], None
    return [float(v) for v in np.ravel(pred.mean)], [float(v) for v in np.ravel(pred.var)]


def pose_covariance(var: list[float]) -> list[float]:
    """Row-major 6×6 covariance (x, y, z, rx, ry, rz) with the predicted position variances on the diagonal."""
    cov = np.zeros((6, 6))
    diag = list(var[:3]) + [UNKNOWN_VAR] * (3 - len(var[:3])) + [UNKNOWN_VAR] * 3
    cov[np.diag_indices(6)] = diag
    return cov.ravel().tolist()


def parse_topics(items: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """`STREAM=/TOPIC[:pkg/msg/Type]` items -> ({stream: topic}, {topic: msgtype})."""
    topics, types = {}, {}
    for item in items:
        stream, sep, rest = item.partition("=")
        if not sep or not rest.startswith("/"):
            raise ValueError(f"--topic {item!r}: expected STREAM=/TOPIC or STREAM=/TOPIC:pkg/msg/Type.")
        topic, _, msgtype = rest.partition(":")
        topics[stream] = topic
        if msgtype:
            types[topic] = msgtype
    return topics, types


def main(argv: list[str] | None = None) -> int:
    """Run the node until shut down."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir")
    ap.add_argument("--topic", action="append", default=[], help="STREAM=/TOPIC[:pkg/msg/Type]")
    ap.add_argument("--rate", type=float, default=None, help="step rate in Hz when the clock stream is not an input")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.node import Node
    from rosidl_runtime_py.utilities import get_message
    from std_msgs.msg import Float64MultiArray

    from seqsense import runtime

    predictor = runtime.load(args.export_dir, threads=args.threads)
    topics, types = parse_topics(args.topic)
    adapter = TickAdapter(predictor.manifest, topics, types)
    clock = predictor.manifest["clock"]

    class PredictorNode(Node):
        """Owns the subscriptions, the step trigger and the publishers."""

        def __init__(self):
            super().__init__("seqsense_predictor")
            self.pub = self.create_publisher(Float64MultiArray, "~/prediction", 10)
            target = predictor.manifest["target"]
            self.pose_pub = None
            if not target["discrete"] and len(predictor.heads) == 2 and int(np.prod(target["shape"]) or 1) in (2, 3):
                self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose", 10)
            self.frame_id = target.get("frame_id") or "map"
            known = dict(self.get_topic_names_and_types())
            clock_topic = adapter.topic_of.get(clock.get("stream") or "")
            for topic in adapter.topics():
                msgtype = types.get(topic) or (known.get(topic) or [None])[0]
                if msgtype is None:
                    raise SystemExit(f"Topic '{topic}' is not published yet and no type was given; use --topic STREAM={topic}:pkg/msg/Type.")
                cb = (lambda m, t=topic, mt=msgtype: self.on_msg(t, mt, m, t == clock_topic))
                self.create_subscription(get_message(msgtype), topic, cb, 50)
            if clock_topic is None:
                rate = args.rate or clock.get("rate_hz") or clock.get("nominal_rate_hz") or 10.0
                self.create_timer(1.0 / float(rate), lambda: self.tick(self.get_clock().now().nanoseconds))

        def on_msg(self, topic, msgtype, msg, is_clock):
            now = self.get_clock().now().nanoseconds
            adapter.on_message(topic, msgtype, msg, now)
            if is_clock:
                self.tick(_stamp_ns(msg, now))

        def tick(self, t_ns: int):
            if predictor.prev_t_ns is not None and t_ns < predictor.prev_t_ns:
                self.get_logger().warn("time went backwards; resetting the predictor")
                predictor.reset()
            try:
                pred = predictor.step(t_ns, adapter.observations(t_ns))
            except runtime.ObservationError as e:  # e.g. a sensor restarted and its stamps went back
                self.get_logger().warn(f"{e} Resetting the predictor.")
                predictor.reset()
                return
            mean, var = prediction_arrays(pred)
            self.pub.publish(Float64MultiArray(data=mean + (var or [])))
            if self.pose_pub is not None:
                m = PoseWithCovarianceStamped()
                m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(t_ns), 1_000_000_000)
                m.header.frame_id = self.frame_id
                xyz = mean + [0.0] * (3 - len(mean))
                m.pose.pose.position.x, m.pose.pose.position.y, m.pose.pose.position.z = xyz[:3]
                m.pose.pose.orientation.w = 1.0
                m.pose.covariance = pose_covariance(var)
                self.pose_pub.publish(m)

    rclpy.init()
    node = PredictorNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
