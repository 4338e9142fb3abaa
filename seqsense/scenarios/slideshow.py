"""`slideshow`: a "PPT video" of static slides with hard cuts; every frame fully shows its target.

Each slide has a random background colour, `shapes` clutter shapes (boxes, disks and marker-like
shapes in colours other than the marker's) and one yellow marker of class c ∈ {disk, square,
triangle, cross}[:classes] at a random pixel-aligned place, drawn on top. A slide is held for
U[hold_min_s, hold_max_s], then the next one appears at once. Within a slide the frames differ only
by pixel noise, so a memoryless model sees everything it needs; memory can only add lag at cuts.

Truth at every frame: `truth/position` (marker centre, normalized image coordinates),
`truth/marker_class` (label), `truth/slide` (label, slide index) and `truth/cut` (event at the first
frame of every slide, t = 0 included, code = the new slide's index).
Hazard: a wall at x = 0.9 on truth/position (clearance = 0.9 − x).
"""

from __future__ import annotations

import numpy as np

from seqsense.log import seconds_to_ns
from seqsense.scenarios import render
from seqsense.scenarios.base import RENDER_BLOCK, EpisodeData, ImageStream, Knob, Scenario, StreamData, register
from seqsense.scenarios.tracking import HAZARD, POS_UNITS

MARKER_SHAPES = ("disk", "square", "triangle", "cross")
MARKER_COLOR = np.array([1.0, 0.9, 0.1], np.float32)
CLUTTER_COLORS = np.array(
    [[0.9, 0.2, 0.2], [0.2, 0.7, 0.3], [0.25, 0.4, 0.95], [0.7, 0.3, 0.8], [0.1, 0.75, 0.8], [0.95, 0.95, 0.95]],
    np.float32,
)


@register("slideshow")
class Slideshow(Scenario):
    """Static slides with hard cuts; owns the slide layout knobs and the marker templates."""

    summary = "static slides with hard cuts: every frame shows its target, memory can only add lag at cuts"
    default_duration_s = 20.0
    knobs = (
        Knob("image_size", int, 64, "frame height and width in pixels", 16, 256),
        Knob("rate_hz", float, 30.0, "camera frame rate", 1.0, 240.0),
        Knob("pixel_noise", float, 0.0, "std of Gaussian pixel noise, in intensity units", 0.0, 1.0),
        Knob("hold_min_s", float, 0.5, "shortest time a slide is shown", 0.05, 600.0),
        Knob("hold_max_s", float, 2.0, "longest time a slide is shown", 0.05, 600.0),
        Knob("shapes", int, 4, "clutter shapes per slide", 0, 12),
        Knob("classes", int, 4, "number of marker classes (disk, square, triangle, cross)", 2, 4),
        Knob("marker_size", float, 0.2, "marker size as a fraction of the image size", 0.1, 0.4),
        Knob("target", str, "position", "default target stream", choices=("position", "marker_class")),
    )

    def check(self) -> None:
        """hold_min_s ≤ hold_max_s."""
        if self.k["hold_min_s"] > self.k["hold_max_s"]:
            raise self.fail(f"hold_min_s={self.k['hold_min_s']} exceeds hold_max_s={self.k['hold_max_s']}.")

    def provenance(self) -> dict:
        """Inputs, target, hazard and the marker classes."""
        return {
            "inputs": ["camera"],
            "target": f"truth/{self.k['target']}",
            "optimal": None,
            "hazard": dict(HAZARD),
            "marker_classes": list(MARKER_SHAPES[: self.k["classes"]]),
            "position_units": POS_UNITS,
        }

    def episode(self, index: int, rng: np.random.Generator) -> EpisodeData:
        """One episode: draw the slides and hold times; frames are rendered lazily per block."""
        k = self.k
        rate, size = k["rate_hz"], k["image_size"]
        n = max(2, int(round(self.duration_s * rate)))
        t = np.arange(n) / rate
        holds = [rng.uniform(k["hold_min_s"], k["hold_max_s"])]
        while sum(holds) <= t[-1]:
            holds.append(rng.uniform(k["hold_min_s"], k["hold_max_s"]))
        starts = np.cumsum([0.0] + holds[:-1])
        slide_of = np.searchsorted(starts, t, side="right") - 1  # (N,)
        slides = [self._draw_slide(rng) for _ in range(len(holds))]
        m_px = max(3, int(round(k["marker_size"] * size)))
        templates = [render.shape_alpha(s, m_px) for s in MARKER_SHAPES[: k["classes"]]]
        canvas = render.Canvas(size, RENDER_BLOCK)
        noise_canvas = render.Canvas(size, RENDER_BLOCK)
        noise_rng = np.random.default_rng(rng.integers(2**63))

        def frames(i0: int, i1: int) -> np.ndarray:
            ids, inv = np.unique(slide_of[i0:i1], return_inverse=True)
            canvas.start(len(ids), np.stack([slides[i]["bg"] for i in ids]))
            for j, i in enumerate(ids):
                self._paint(canvas, j, slides[i], templates, size)
            noise_canvas.load(canvas.planes[:, inv])
            return noise_canvas.to_uint8(k["pixel_noise"], noise_rng)

        cells = np.array([s["cell"] for s in slides])  # (S, 2) marker top-left pixel (col, row)
        pos = (cells[slide_of] + m_px / 2.0) / size  # (N, 2) marker centre
        cls = np.array([s["cls"] for s in slides], np.int64)[slide_of]
        first = np.flatnonzero(np.r_[True, np.diff(slide_of) != 0])
        t_ns = seconds_to_ns(t)
        streams = [
            ImageStream("camera", t_ns, (size, size, 3), frames, rate),
            StreamData("truth/position", "vector", t_ns, pos.astype(np.float32), POS_UNITS, rate, "image", ["x", "y"]),
            StreamData("truth/marker_class", "label", t_ns, cls, "class index into provenance marker_classes", rate, "image"),
            StreamData("truth/slide", "label", t_ns, slide_of.astype(np.int64), "slide index", rate, "image"),
            StreamData("truth/cut", "event", t_ns[first], slide_of[first].astype(np.int64),
                       "index of the slide that appears", float("nan"), "image"),
        ]
        return EpisodeData(streams, {"slides": int(slide_of[-1] + 1)})

    def _draw_slide(self, rng: np.random.Generator) -> dict:
        """Random layout of one slide: background, clutter and marker class and cell."""
        k, size = self.k, self.k["image_size"]
        m_px = max(3, int(round(k["marker_size"] * size)))
        clutter = []
        for _ in range(k["shapes"]):
            kind = rng.choice(["box", "disk"] + list(MARKER_SHAPES[: k["classes"]]))
            clutter.append({
                "kind": str(kind),
                "center": rng.uniform(0.05, 0.95, 2),
                "extent": rng.uniform(0.06, 0.2, 2),
                "color": CLUTTER_COLORS[rng.integers(len(CLUTTER_COLORS))],
            })
        return {
            "bg": rng.uniform(0.05, 0.45, 3).astype(np.float32),
            "clutter": clutter,
            "cls": int(rng.integers(k["classes"])),
            "cell": rng.integers(0, size - m_px + 1, 2),
        }

    @staticmethod
    def _paint(canvas: render.Canvas, j: int, slide: dict, templates: list, size: int) -> None:
        """Draw the clutter and the marker of `slide` into frame `j` of `canvas`."""
        frame = np.array([j])
        for c in slide["clutter"]:
            (cx, cy), (ex, ey) = c["center"], c["extent"]
            if c["kind"] == "box":
                a = render.box_alpha([cx - ex / 2], [cy - ey / 2], [cx + ex / 2], [cy + ey / 2], size)
            elif c["kind"] == "disk":
                a = render.disk_alpha([cx], [cy], ex / 2, size)
            else:
                a = _paste(templates[MARKER_SHAPES.index(c["kind"])], (cx, cy), size)
            canvas.blend(a, c["color"], frames=frame)
        a = np.zeros((1, size, size), np.float32)
        tpl = templates[slide["cls"]]
        x0, y0 = slide["cell"]
        a[0, y0 : y0 + tpl.shape[0], x0 : x0 + tpl.shape[1]] = tpl
        canvas.blend(a, MARKER_COLOR, frames=frame)


def _paste(template: np.ndarray, center, size: int) -> np.ndarray:
    """Coverage (1, size, size) of `template` placed with its centre near `center` (clipped at edges)."""
    m = template.shape[0]
    x0 = int(round(center[0] * size - m / 2))
    y0 = int(round(center[1] * size - m / 2))
    a = np.zeros((1, size + 2 * m, size + 2 * m), np.float32)
    xs, ys = min(max(x0, -m), size) + m, min(max(y0, -m), size) + m
    a[0, ys : ys + m, xs : xs + m] = template
    return a[:, m : m + size, m : m + size].copy()
