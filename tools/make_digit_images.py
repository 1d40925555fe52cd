#!/usr/bin/env python
"""Draw the example digits in examples/digits/ (the `netspec predict` image demo).

Each digit 0-9 is drawn as pen strokes (polylines and arcs in a unit box, a
round pen about 1/8 of the digit's height, like MNIST's strokes) in black on a
white canvas much larger than the digit and away from its centre: what a user
gets from a drawing program, and exactly what a plain resize to 28x28 gets
wrong. A few files vary the format on purpose: a JPEG, a BMP, a colour PNG
(blue ink on cream paper) and a PNG whose background is transparent.

Files are named ``<digit>-<what>.<ext>``, so a test can read the true label
from the name. Output is deterministic (fixed seed).

Usage:
    python tools/make_digit_images.py [--out examples/digits]
"""
import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "examples" / "digits"
SEED = 28


def _arc(cx, cy, rx, ry, start, stop, n=24):
    """Points on an ellipse from angle ``start`` to ``stop`` (degrees; 0 = right, 90 = down)."""
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(start, stop, n)]


# Strokes of each digit in a unit box (x right, y down); each stroke is one pen-down polyline.
STROKES = {
    0: [_arc(0.5, 0.5, 0.4, 0.5, 0, 360, 48)],
    1: [[(0.3, 0.2), (0.55, 0.0), (0.55, 1.0)]],
    2: [_arc(0.5, 0.28, 0.38, 0.28, 190, 380) + [(0.1, 1.0), (0.92, 1.0)]],
    3: [_arc(0.48, 0.26, 0.36, 0.26, 200, 450), _arc(0.48, 0.74, 0.42, 0.26, 270, 520)],
    4: [[(0.7, 1.0), (0.7, 0.0), (0.05, 0.68), (0.95, 0.68)]],
    5: [[(0.85, 0.0), (0.2, 0.0), (0.15, 0.45)] + _arc(0.48, 0.68, 0.4, 0.32, 230, 500)],
    6: [_arc(0.9, 0.62, 0.8, 0.62, 250, 180, 12) + _arc(0.5, 0.7, 0.4, 0.3, 180, 540)],
    7: [[(0.08, 0.0), (0.92, 0.0), (0.4, 1.0)]],
    8: [_arc(0.5, 0.25, 0.32, 0.25, 90, 450), _arc(0.5, 0.74, 0.4, 0.26, -90, 270)],
    9: [_arc(0.5, 0.3, 0.4, 0.3, 0, 360, 48), [(0.9, 0.3), (0.85, 1.0)]],
}

# (digit, name, canvas (w, h), digit height, format): sizes and places vary on purpose
PLAN = [
    (0, "png", (320, 240), 150, "png"),
    (1, "png", (300, 300), 120, "png"),
    (2, "png", (400, 260), 90, "png"),
    (3, "jpeg", (320, 240), 140, "jpg"),
    (4, "png", (280, 360), 200, "png"),
    (5, "bmp", (96, 80), 50, "bmp"),
    (6, "png", (320, 240), 110, "png"),
    (7, "color", (360, 240), 130, "png"),
    (8, "png", (240, 320), 180, "png"),
    (9, "transparent", (300, 220), 120, "png"),
]


def draw_digit(digit, canvas=(320, 240), height=120, rng=None, ink=0, paper=255, mode="L"):
    """A digit drawn with a round pen at a random place on a canvas; ``ink``/``paper`` are fill values."""
    rng = rng or np.random.default_rng(SEED)
    width = 0.62 * height
    x0 = rng.uniform(0.05 * canvas[0], canvas[0] - width - 0.05 * canvas[0])
    y0 = rng.uniform(0.05 * canvas[1], canvas[1] - height - 0.05 * canvas[1])
    pen = max(2, round(height / 8))
    img = Image.new(mode, canvas, paper)
    draw = ImageDraw.Draw(img)
    for stroke in STROKES[digit]:
        pts = [(x0 + x * width, y0 + y * height) for x, y in stroke]
        draw.line(pts, fill=ink, width=pen, joint="curve")
        for x, y in (pts[0], pts[-1]):  # round pen ends
            draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=ink)
    return img


def make_all(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    written = []
    for digit, what, canvas, height, ext in PLAN:
        if what == "color":
            img = draw_digit(digit, canvas, height, rng, ink=(30, 60, 170), paper=(250, 240, 215), mode="RGB")
        elif what == "transparent":
            img = draw_digit(digit, canvas, height, rng, ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA")
        else:
            img = draw_digit(digit, canvas, height, rng)
        path = out / f"{digit}-{what}.{ext}"
        img.save(path, quality=85) if ext == "jpg" else img.save(path, optimize=ext == "png")
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    paths = make_all(args.out)
    total = sum(p.stat().st_size for p in paths)
    for p in paths:
        print(f"{p}  {p.stat().st_size} bytes")
    print(f"{len(paths)} files, {total} bytes")


if __name__ == "__main__":
    main()
