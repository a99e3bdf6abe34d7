"""A judge of the demo world's pictures that reads their pixels, not a CLIP.

The curation benchmark must not be judged by the model that chose its data (the demo CLIP filters
the pairs, conditions the model and would otherwise score it too). The demo world draws one
shape of one palette colour on a plain background of another (`models/demo/synth.py`), so what a
picture shows can be read back deterministically:

- background: the median colour of the outer ring (the world keeps shapes 4% of the side away
  from the edges), mapped to the nearest palette colour;
- foreground: the median colour of the pixels far from that background, the nearest palette
  colour other than the background's;
- shape: from the foreground mask's fill of its bounding box and whether its centre is filled
  (ring), with fixed cut-offs; less reliable than the colours at 32 px, so the benchmark scores
  colours, and reports shapes separately.

`tests/test_demo_judge.py` measures the judge against the generator's own truth (rendered
scenes at 32 and 64 px).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..models.demo.synth import COLOURS, SAFE_SHAPES, UNSAFE_SHAPE

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float64)
_CAPTION = re.compile(r"^an? (\w+) (\w+) on an? (\w+) background$")


@dataclass(frozen=True)
class Verdict:
    colour: str
    background: str
    shape: str


def _nearest(rgb: np.ndarray, exclude: str | None = None) -> str:
    d = ((_PALETTE - rgb) ** 2).sum(axis=1)
    if exclude is not None:
        d[_NAMES.index(exclude)] = np.inf
    return _NAMES[int(d.argmin())]


def judge(image: Image.Image | np.ndarray) -> Verdict:
    """What a demo picture shows: foreground colour, background colour, shape."""
    a = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    h, w = a.shape[:2]
    ring = max(1, round(0.06 * min(h, w)))
    border = np.concatenate([a[:ring].reshape(-1, 3), a[-ring:].reshape(-1, 3), a[:, :ring].reshape(-1, 3),
                             a[:, -ring:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb)
    dist = np.sqrt(((a - _PALETTE[_NAMES.index(background)]) ** 2).sum(axis=2))
    mask = dist > 60.0
    if mask.sum() < 0.01 * h * w:  # nothing drawn: the best guess is the ring's second colour
        return Verdict(_nearest(bg_rgb, exclude=background), background, "none")
    colour = _nearest(np.median(a[mask], axis=0), exclude=background)
    return Verdict(colour, background, _shape(mask))


def _shape(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[y0:y1, x0:x1]
    fill = box.mean()
    cy, cx = (y1 - y0) // 2, (x1 - x0) // 2
    r = max(1, min(y1 - y0, x1 - x0) // 8)
    centre = box[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1].mean()
    if centre < 0.3:
        return "ring"
    if fill > 0.86:
        return "square"
    if fill > 0.7:
        return "circle"
    if fill > 0.53:
        return "diamond"
    if fill > 0.44:
        return "triangle"
    return "star"


def prompt_labels(prompt: str) -> Verdict | None:
    """(colour, background, shape) an English demo caption asks for; None for another text."""
    m = _CAPTION.match(prompt.strip())
    if not m or m.group(1) not in COLOURS or m.group(3) not in COLOURS:
        return None
    shape = m.group(2)
    return Verdict(m.group(1), m.group(3), shape if shape in SAFE_SHAPES + (UNSAFE_SHAPE,) else "other")
