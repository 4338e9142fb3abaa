"""What the image-sequence importers share: image files -> uint8 frames, frame-time files, boxes.

Frames are decoded with OpenCV on a thread pool (it releases the GIL) and stored as uint8
(H, W, C): RGB for colour files, (H, W, 1) for grey ones, RGBA where the file has alpha. 16-bit
files (depth maps) are refused: the log format has no uint16 image kind. Annotations are OTB boxes
(`x,y,w,h`) or VOT polygons (`x1,y1,...,x4,y4`, reduced to their axis-aligned box), comma,
tab or whitespace separated, one line per frame; they become `truth/box_center` and
`truth/box_size` in normalized image coordinates (0..1, x right, y down), like the tracking
scenarios' `truth/position`, NaN where a frame has no box.
"""

from __future__ import annotations

import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from seqsense.errors import SeqsenseError
from seqsense.importers.mapping import Mapping
from seqsense.importers.messages import Part

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp"}
BLOCK_BYTES = 16 * 1024 * 1024
BOX_UNITS = "normalized image coordinates [0, 1] (x right, y down)"


def natural_key(name: str) -> list:
    """Sort key putting `img2` before `img10`."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, in natural order."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: natural_key(p.name))


def read_image(path: Path, size: tuple[int, int] | None, where: str) -> np.ndarray:
    """One image file as uint8 (H, W, C), resized to `size` (W, H) when given."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        if not path.exists():
            raise SeqsenseError(f"{where}: image file '{path}' does not exist.")
        raise SeqsenseError(f"{where}: OpenCV cannot decode '{path}' (damaged or not an image).")
    if img.dtype != np.uint8:
        raise SeqsenseError(f"{where}: '{path}' is a {img.dtype} image (e.g. a 16-bit depth map); the log format "
                            "stores 8-bit images only.")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
        img = cv2.resize(img, tuple(size), interpolation=cv2.INTER_AREA)
    return img if img.ndim == 3 else img[..., None]


def image_part(first: np.ndarray) -> Part:
    """The Part of an image stream whose first frame is `first`."""
    return Part("", "image", first.shape, "intensity 0-255")


def image_blocks(files: list[Path], size, where: str, progress: bool, first: np.ndarray | None = None,
                 desc: str = "frames") -> Iterator[tuple[int, np.ndarray]]:
    """(i0, frames (n, H, W, C)) for `files` in order, decoded on a thread pool; sizes must agree."""
    from tqdm import tqdm

    if not files:
        return
    first = read_image(files[0], size, where) if first is None else first
    per_block = max(4, (BLOCK_BYTES // max(1, first.nbytes)) // 4 * 4)
    bar = tqdm(total=len(files), unit="frame", desc=desc, disable=not progress, file=sys.stderr, leave=False)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        try:
            for i0 in range(0, len(files), per_block):
                chunk = files[i0 : i0 + per_block]
                frames = list(pool.map(lambda p: read_image(p, size, where), chunk))
                for k, fr in enumerate(frames):
                    if fr.shape != first.shape:
                        raise SeqsenseError(
                            f"{where} frame {i0 + k} ('{chunk[k].name}'): {fr.shape[1]}x{fr.shape[0]}x{fr.shape[2]} "
                            f"but earlier frames are {first.shape[1]}x{first.shape[0]}x{first.shape[2]}; "
                            "pass --image-size WxH to resize every frame.")
                bar.update(len(chunk))
                yield i0, np.stack(frames)
        finally:
            bar.close()


def stream_names(defaults: list[str], mapping: Mapping, where: str) -> dict[str, list[str]]:
    """Output names per default stream name: renamed by mapping entries (`--map cam0=camera`), kept
    as they are, or dropped (`include_unmapped: false`); an entry naming no stream is an error."""
    keyed = [e for e in mapping.streams if e.get("topic")]
    for e in keyed:
        if e["topic"] not in defaults:
            raise SeqsenseError(f"{where}: --map/--config names '{e['topic']}', which is not a stream here; "
                                f"streams: {', '.join(defaults)}.")
    out = {}
    for name in defaults:
        entries = mapping.entries_for(name)
        if entries:
            out[name] = [e["stream"] for e in entries]
        elif mapping.include_unmapped:
            out[name] = [name]
    return out


def parse_boxes(path: Path, n_frames: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """OTB (x,y,w,h) or VOT (8-value polygon) lines -> box centers and sizes (N, 2), normalized; NaN if absent."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise SeqsenseError(f"'{path}': cannot read ({e.strerror}).") from e
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != n_frames:
        raise SeqsenseError(f"'{path}': {len(lines)} annotation line(s) for {n_frames} frame(s); they must match "
                            "one to one (one box per frame, in frame order).")
    center = np.full((n_frames, 2), np.nan)
    box_size = np.full((n_frames, 2), np.nan)
    for i, line in enumerate(lines):
        cells = [c for c in re.split(r"[,\s]+", line.strip()) if c]
        if not cells:
            continue
        try:
            v = np.array([float(c) for c in cells])
        except ValueError:
            raise SeqsenseError(f"'{path}' line {i + 1}: {line.strip()!r} is not a box: expected 4 numbers x,y,w,h "
                                "(OTB) or 8 numbers x1,y1,...,x4,y4 (VOT polygon).") from None
        if len(v) == 4:
            x, y, w, h = v
        elif len(v) == 8 or (len(v) > 4 and len(v) % 2 == 0):
            xs, ys = v[0::2], v[1::2]
            x, y, w, h = xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()
        elif len(v) == 1 and not np.isfinite(v[0]):
            continue
        else:
            raise SeqsenseError(f"'{path}' line {i + 1}: {len(v)} values; expected 4 (OTB x,y,w,h) or 8 (VOT polygon).")
        if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
            continue  # no target in this frame
        center[i] = ((x + w / 2) / width, (y + h / 2) / height)
        box_size[i] = (w / width, h / height)
    return center.astype(np.float32), box_size.astype(np.float32)


def box_parts(center: np.ndarray, source_size: tuple[int, int]) -> tuple[Part, Part]:
    """The Parts of `truth/box_center` and `truth/box_size`."""
    nan = bool(np.isnan(center).any())
    attrs = {"frame_id": "image", "image_width": int(source_size[0]), "image_height": int(source_size[1])}
    return (Part("", "vector", (2,), BOX_UNITS, ("x", "y"), nan, attrs),
            Part("", "vector", (2,), BOX_UNITS, ("w", "h"), nan, attrs))
