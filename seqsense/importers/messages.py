"""Registry of message converters: each ROS message type becomes one or more seqsense streams.

A converter is created per topic. `parts(first_msg)` declares the streams it fills (name suffix,
kind, sample shape, field names, units) from the topic's first message; `convert(msg)` returns one
sample per part. A part with suffix "" is the stream `<base>` itself, any other suffix gives
`<base>/<suffix>` (e.g. `odom/pose`, `odom/twist`, `imu/orientation`).

Message types are keyed as rosbags names them (`sensor_msgs/msg/Imu`); `sensor_msgs/Imu` is accepted
too. Numeric fields of any other type are imported with a `FieldPathConverter` (`--map` with field
paths such as `twist.twist.linear.x` or `pose.covariance[0]`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import cv2
import numpy as np



@dataclasses.dataclass(frozen=True)
class Part:
    """One output stream of a converter: its name suffix, kind, sample shape, fields and units."""

    suffix: str
    kind: str
    shape: tuple
    units: str
    fields: tuple | None = None
    allow_nan: bool = False
    attrs: dict = dataclasses.field(default_factory=dict)


CONVERTERS: dict[str, type["MessageConverter"]] = {}


def register(*msgtypes: str) -> Callable:
    """Class decorator: register a converter for the given message types."""

    def deco(cls):
        for name in msgtypes:
            CONVERTERS[normalize_msgtype(name)] = cls
        return cls

    return deco


def normalize_msgtype(msgtype: str) -> str:
    """'sensor_msgs/Imu' -> 'sensor_msgs/msg/Imu' (the rosbags spelling); other names unchanged."""
    parts = msgtype.strip().split("/")
    if len(parts) == 2:
        return f"{parts[0]}/msg/{parts[1]}"
    return msgtype.strip()


def supported_types() -> list[str]:
    """The registered message types, in ROS 1 spelling (`pkg/Type`)."""
    return sorted(t.replace("/msg/", "/") for t in CONVERTERS)


def unsupported_message(topic: str, msgtype: str) -> str:
    """The help text for a topic whose type has no converter."""
    return (
        f"topic '{topic}' has type {msgtype.replace('/msg/', '/')}, which has no built-in converter. "
        f"Supported types: {', '.join(supported_types())}. Map its numeric fields by hand with "
        f"--map '{topic}:FIELD.PATH,FIELD.PATH=STREAM' (e.g. --map '{topic}:data=value')."
    )


class MessageConverter:
    """Turns the messages of one topic into samples of its parts; owns per-topic state.

    `batch` > 1 lets the importer keep up to that many messages converting on a thread pool (image
    decoding); `convert` must then be safe to call from several threads after `parts`.
    """

    batch = 1

    def __init__(self, image_size: tuple[int, int] | None = None):
        self.image_size = image_size

    def parts(self, msg: Any) -> list[Part]:
        """The streams this topic fills, decided from its first message."""
        raise NotImplementedError

    def convert(self, msg: Any) -> list:
        """One sample per part for `msg`."""
        raise NotImplementedError


def stamp_ns(msg: Any) -> int | None:
    """Header stamp of `msg` in ns, or None when it has no header or the stamp is zero (unset)."""
    header = getattr(msg, "header", None)
    if header is None:
        return None
    t = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return t if t != 0 else None


def _xyz(v) -> list[float]:
    return [v.x, v.y, v.z]


def _xyzw(q) -> list[float]:
    return [q.x, q.y, q.z, q.w]


POSE_FIELDS = ("x", "y", "z", "qx", "qy", "qz", "qw")
POSE_UNITS = "m (x, y, z), quaternion (qx, qy, qz, qw)"
TWIST_FIELDS = ("vx", "vy", "vz", "wx", "wy", "wz")
TWIST_UNITS = "m/s (vx, vy, vz), rad/s (wx, wy, wz)"


@register("sensor_msgs/msg/Imu")
class ImuConverter(MessageConverter):
    """Imu -> `<base>` (accelerometer + gyroscope) and, when provided, `<base>/orientation`."""

    def parts(self, msg):
        out = [Part("", "vector", (6,), "m/s^2 (acc_*), rad/s (gyr_*)",
                    ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"))]
        # ROS convention: orientation_covariance[0] == -1 means the sensor gives no orientation.
        self.has_orientation = float(msg.orientation_covariance[0]) != -1.0
        if self.has_orientation:
            out.append(Part("orientation", "vector", (4,), "quaternion", ("qx", "qy", "qz", "qw")))
        return out

    def convert(self, msg):
        s = _xyz(msg.linear_acceleration) + _xyz(msg.angular_velocity)
        return [s, _xyzw(msg.orientation)] if self.has_orientation else [s]


@register("sensor_msgs/msg/MagneticField")
class MagneticFieldConverter(MessageConverter):
    """MagneticField -> `<base>` (x, y, z in tesla)."""

    def parts(self, msg):
        return [Part("", "vector", (3,), "T", ("x", "y", "z"))]

    def convert(self, msg):
        return [_xyz(msg.magnetic_field)]


@register("sensor_msgs/msg/JointState")
class JointStateConverter(MessageConverter):
    """JointState -> `<base>/position`, `/velocity`, `/effort` (those present), fields = joint names."""

    KINDS = (("position", "rad or m"), ("velocity", "rad/s or m/s"), ("effort", "N*m or N"))

    def parts(self, msg):
        self.names = list(msg.name)
        self.present = [k for k, _ in self.KINDS if len(getattr(msg, k)) == len(self.names) > 0]
        units = dict(self.KINDS)
        return [Part(k, "vector", (len(self.names),), units[k], tuple(self.names)) for k in self.present]

    def convert(self, msg):
        if list(msg.name) != self.names:
            order = {n: i for i, n in enumerate(msg.name)}
            missing = [n for n in self.names if n not in order]
            if missing:
                raise ValueError(f"joints {missing} of the first message are missing (names: {list(msg.name)})")
            idx = [order[n] for n in self.names]
            return [np.asarray(getattr(msg, k), dtype=np.float64)[idx] for k in self.present]
        out = []
        for k in self.present:
            v = getattr(msg, k)
            if len(v) != len(self.names):
                raise ValueError(f"'{k}' has {len(v)} values for {len(self.names)} joints")
            out.append(v)
        return out


@register("sensor_msgs/msg/NavSatFix")
class NavSatFixConverter(MessageConverter):
    """NavSatFix -> `<base>`: latitude, longitude, altitude, fix status and ENU position variances."""

    def parts(self, msg):
        # No-fix messages carry NaN positions: the import drops them as missing readings (and counts them).
        return [Part("", "vector", (7,), "deg (latitude, longitude), m (altitude), status code, m^2 (var_*)",
                     ("latitude", "longitude", "altitude", "status", "var_east", "var_north", "var_up"))]

    def convert(self, msg):
        c = msg.position_covariance
        return [[msg.latitude, msg.longitude, msg.altitude, msg.status.status, c[0], c[4], c[8]]]


@register("nav_msgs/msg/Odometry")
class OdometryConverter(MessageConverter):
    """Odometry -> `<base>/pose` (in header.frame_id) and `<base>/twist` (in child_frame_id)."""

    def parts(self, msg):
        child = {"frame_id": str(msg.child_frame_id)}  # the twist is expressed in the child frame
        return [Part("pose", "vector", (7,), POSE_UNITS, POSE_FIELDS),
                Part("twist", "vector", (6,), TWIST_UNITS, TWIST_FIELDS, attrs=child)]

    def convert(self, msg):
        p, t = msg.pose.pose, msg.twist.twist
        return [_xyz(p.position) + _xyzw(p.orientation), _xyz(t.linear) + _xyz(t.angular)]


@register("geometry_msgs/msg/PoseStamped")
class PoseStampedConverter(MessageConverter):
    """PoseStamped -> `<base>` (position + orientation quaternion)."""

    def parts(self, msg):
        return [Part("", "vector", (7,), POSE_UNITS, POSE_FIELDS)]

    def convert(self, msg):
        return [_xyz(msg.pose.position) + _xyzw(msg.pose.orientation)]


@register("geometry_msgs/msg/PoseWithCovarianceStamped")
class PoseWithCovarianceConverter(MessageConverter):
    """PoseWithCovarianceStamped -> `<base>` (the mean pose; map `pose.covariance[i]` for variances)."""

    def parts(self, msg):
        return [Part("", "vector", (7,), POSE_UNITS, POSE_FIELDS)]

    def convert(self, msg):
        p = msg.pose.pose
        return [_xyz(p.position) + _xyzw(p.orientation)]


@register("geometry_msgs/msg/TwistStamped")
class TwistStampedConverter(MessageConverter):
    """TwistStamped -> `<base>` (linear + angular velocity)."""

    def parts(self, msg):
        return [Part("", "vector", (6,), TWIST_UNITS, TWIST_FIELDS)]

    def convert(self, msg):
        return [_xyz(msg.twist.linear) + _xyz(msg.twist.angular)]


@register("sensor_msgs/msg/Range")
class RangeConverter(MessageConverter):
    """Range -> `<base>` scalar in m (ROS's +/-Inf out-of-range readings are dropped and counted, unless a
    mapping entry marks the stream `"allow_nan": true`)."""

    def parts(self, msg):
        attrs = {"min_range_m": float(msg.min_range), "max_range_m": float(msg.max_range),
                 "field_of_view_rad": float(msg.field_of_view), "radiation_type": int(msg.radiation_type)}
        return [Part("", "scalar", (), "m", attrs=attrs)]

    def convert(self, msg):
        return [msg.range]


# encoding -> (channels, cv2 conversion to RGB(A) or None, bytes per channel)
IMAGE_ENCODINGS = {
    "mono8": (1, None, 1),
    "mono16": (1, None, 2),
    "rgb8": (3, None, 1),
    "bgr8": (3, cv2.COLOR_BGR2RGB, 1),
    "rgba8": (4, None, 1),
    "bgra8": (4, cv2.COLOR_BGRA2RGBA, 1),
}


class _ImageBase(MessageConverter):
    """Shared part of the image converters: the output shape and the optional resize."""

    encoding_note = ""
    batch = 8

    def parts(self, msg):
        img = self.decode(msg)
        self.shape = img.shape
        attrs = {"encoding": self.encoding_note} if self.encoding_note else {}
        return [Part("", "image", img.shape, "intensity 0-255", attrs=attrs)]

    def convert(self, msg):
        img = self.decode(msg)
        if img.shape != self.shape:
            raise ValueError(f"image of shape {img.shape} after frames of shape {self.shape}; "
                             "use --image-size WxH to resize every frame")
        return [img]

    def _finish(self, img: np.ndarray) -> np.ndarray:
        if self.image_size is not None and (img.shape[1], img.shape[0]) != self.image_size:
            img = cv2.resize(img, self.image_size, interpolation=cv2.INTER_AREA)
        return img if img.ndim == 3 else img[:, :, None]  # (H, W, C)


@register("sensor_msgs/msg/Image")
class ImageConverter(_ImageBase):
    """Image (mono8, mono16, rgb8, bgr8, rgba8, bgra8) -> `<base>` uint8 (H, W, C), RGB(A) order."""

    def decode(self, msg) -> np.ndarray:
        """The message's pixels as uint8 (H, W, C)."""
        enc = str(msg.encoding).lower()
        if enc not in IMAGE_ENCODINGS:
            raise ValueError(f"image encoding {msg.encoding!r} is not supported; supported: {sorted(IMAGE_ENCODINGS)}")
        c, conversion, nbytes = IMAGE_ENCODINGS[enc]
        h, w, step = int(msg.height), int(msg.width), int(msg.step)
        buf = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
        if buf.size < h * step or step < w * c * nbytes:
            raise ValueError(f"image data of {buf.size} bytes is too short for {h}x{w} {enc} (step {step})")
        rows = buf[: h * step].reshape(h, step)[:, : w * c * nbytes]  # drop row padding
        if nbytes == 2:
            dt = np.dtype(">u2" if msg.is_bigendian else "<u2")
            # The log stores uint8: keep the 8 most significant bits of each 16-bit pixel.
            img = (rows.copy().view(dt).reshape(h, w, c) >> 8).astype(np.uint8)
            self.encoding_note = "mono16 scaled to 8 bits (value >> 8)"
        else:
            img = rows.reshape(h, w, c)
        if conversion is not None:
            img = cv2.cvtColor(img, conversion)
        return self._finish(img)


@register("sensor_msgs/msg/CompressedImage")
class CompressedImageConverter(_ImageBase):
    """CompressedImage (jpeg, png) -> `<base>` uint8 (H, W, C), RGB order for colour images."""

    def decode(self, msg) -> np.ndarray:
        """The decoded pixels as uint8 (H, W, C)."""
        fmt = str(msg.format).lower()
        if "jpeg" not in fmt and "jpg" not in fmt and "png" not in fmt:
            raise ValueError(f"compressed format {msg.format!r} is not supported; supported: jpeg, png")
        img = cv2.imdecode(np.frombuffer(memoryview(msg.data), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"the {fmt.split(';')[-1].strip() or 'compressed'} data could not be decoded (corrupt image)")
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
            self.encoding_note = "16-bit png scaled to 8 bits (value >> 8)"
        if img.ndim == 3 and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
        return self._finish(img)


_PATH_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\[(\d+)\])?$")


def resolve_path(msg: Any, path: str):
    """The value at a field path such as `twist.twist.linear.x` or `pose.covariance[0]`."""
    value = msg
    for token in path.split("."):
        m = _PATH_RE.match(token)
        if m is None:
            raise ValueError(f"field path {path!r}: {token!r} is not a field name (optionally with [index])")
        if not hasattr(value, m.group(1)):
            names = [f for f in getattr(value, "__dataclass_fields__", {}) if not f.startswith("__")]
            raise ValueError(f"field path {path!r}: no field {m.group(1)!r}; fields there: {names}")
        value = getattr(value, m.group(1))
        if m.group(3) is not None:
            value = value[int(m.group(3))]
    return value


class FieldPathConverter(MessageConverter):
    """Numeric fields picked by path (`--map TOPIC:a.b,c[0]=STREAM`) -> one vector stream."""

    def __init__(self, paths: list[str], names: list[str] | None = None, units: str = "",
                 allow_nan: bool = False, image_size=None):
        super().__init__(image_size)
        self.paths = list(paths)
        self.names = list(names) if names else None
        self.units = units
        self.allow_nan = allow_nan

    def _values(self, msg) -> list[float]:
        out: list[float] = []
        for p in self.paths:
            v = resolve_path(msg, p)
            if isinstance(v, (bool, int, float, np.number)):
                out.append(float(v))
            elif isinstance(v, (np.ndarray, list, tuple)) and np.asarray(v).dtype.kind in "biuf":
                out.extend(float(x) for x in np.asarray(v).ravel())
            else:
                raise ValueError(f"field path {p!r} holds a {type(v).__name__}, not a number or numeric array")
        return out

    def parts(self, msg):
        n = len(self._values(msg))
        names = self.names or (self.paths if n == len(self.paths) else [f"x{i}" for i in range(n)])
        if len(names) != n:
            raise ValueError(f"{len(names)} field names {names} for {n} values from paths {self.paths}")
        return [Part("", "vector", (n,), self.units, tuple(names), allow_nan=self.allow_nan,
                     attrs={"field_paths": list(self.paths)})]

    def convert(self, msg):
        return [self._values(msg)]


def make_converter(msgtype: str, image_size=None) -> MessageConverter | None:
    """A new converter for `msgtype`, or None when the type has no built-in converter."""
    cls = CONVERTERS.get(normalize_msgtype(msgtype))
    return cls(image_size) if cls is not None else None
