"""Pictures of errors, as PNG files with no plotting library: per-layer relative error against
the layer index (verification) and a layer x expert heat map of each expert Linear's error
(quantization). Drawn on a numpy canvas with a 5x7 bitmap font; written by zlib."""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from converter.model import ARCHITECTURES

__all__ = ["expert_heatmap", "layer_error_plot", "png"]

BLACK, GREY = (40, 40, 40), (200, 200, 200)
RED = (214, 39, 40)
BAND = (255, 215, 215)  # behind a layer over the limit
SERIES = {"attention": (31, 119, 180), "moe": (255, 127, 14), "output": (44, 160, 44)}
# viridis at five stops, interpolated linearly
_MAP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
                np.float64)

_FONT = {  # 5x7 glyphs, one string of five pixels per row
    '0': '01110 10001 10011 10101 11001 10001 01110',
    '1': '00100 01100 00100 00100 00100 00100 01110',
    '2': '01110 10001 00001 00010 00100 01000 11111',
    '3': '11110 00001 00001 01110 00001 00001 11110',
    '4': '00010 00110 01010 10010 11111 00010 00010',
    '5': '11111 10000 11110 00001 00001 10001 01110',
    '6': '00110 01000 10000 11110 10001 10001 01110',
    '7': '11111 00001 00010 00100 01000 01000 01000',
    '8': '01110 10001 10001 01110 10001 10001 01110',
    '9': '01110 10001 10001 01111 00001 00010 01100',
    'A': '01110 10001 10001 11111 10001 10001 10001',
    'B': '11110 10001 10001 11110 10001 10001 11110',
    'C': '01110 10001 10000 10000 10000 10001 01110',
    'D': '11110 10001 10001 10001 10001 10001 11110',
    'E': '11111 10000 10000 11110 10000 10000 11111',
    'F': '11111 10000 10000 11110 10000 10000 10000',
    'G': '01110 10001 10000 10111 10001 10001 01111',
    'H': '10001 10001 10001 11111 10001 10001 10001',
    'I': '01110 00100 00100 00100 00100 00100 01110',
    'K': '10001 10010 10100 11000 10100 10010 10001',
    'L': '10000 10000 10000 10000 10000 10000 11111',
    'M': '10001 11011 10101 10101 10001 10001 10001',
    'N': '10001 11001 10101 10011 10001 10001 10001',
    'O': '01110 10001 10001 10001 10001 10001 01110',
    'P': '11110 10001 10001 11110 10000 10000 10000',
    'R': '11110 10001 10001 11110 10100 10010 10001',
    'S': '01111 10000 10000 01110 00001 00001 11110',
    'T': '11111 00100 00100 00100 00100 00100 00100',
    'U': '10001 10001 10001 10001 10001 10001 01110',
    'V': '10001 10001 10001 10001 10001 01010 00100',
    'W': '10001 10001 10001 10101 10101 10101 01010',
    'X': '10001 10001 01010 00100 01010 10001 10001',
    'Y': '10001 10001 01010 00100 00100 00100 00100',
    'Z': '11111 00001 00010 00100 01000 10000 11111',
    '.': '00000 00000 00000 00000 00000 01100 01100',
    '-': '00000 00000 00000 11111 00000 00000 00000',
    '+': '00000 00100 00100 11111 00100 00100 00000',
    ':': '00000 01100 01100 00000 01100 01100 00000',
    '(': '00010 00100 01000 01000 01000 00100 00010',
    ')': '01000 00100 00010 00010 00010 00100 01000',
    '/': '00001 00010 00010 00100 01000 01000 10000',
    '=': '00000 00000 11111 00000 11111 00000 00000',
    '!': '00100 00100 00100 00100 00100 00000 00100',
    'Q': '01110 10001 10001 10001 10101 10010 01101',
    'J': '00111 00010 00010 00010 00010 10010 01100',
    ',': '00000 00000 00000 00000 01100 00100 01000',
    '_': '00000 00000 00000 00000 00000 00000 11111',
    "'": '00100 00100 01000 00000 00000 00000 00000',
    '<': '00010 00100 01000 10000 01000 00100 00010',
    '>': '01000 00100 00010 00001 00010 00100 01000',
    '|': '00100 00100 00100 00100 00100 00100 00100',
    ' ': '00000 00000 00000 00000 00000 00000 00000',
    '%': '11001 11010 00010 00100 01000 01011 10011',
}
_GLYPHS = {c: np.array([[p == "1" for p in row] for row in rows.split()])
           for c, rows in _FONT.items()}


def png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an RGB image [height, width, 3] (uint8)."""
    height, width, _ = pixels.shape
    raw = np.concatenate([np.zeros((height, 1), np.uint8),
                          pixels.reshape(height, width * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


class Canvas:
    """An RGB image to draw on, with pixel coordinates (x right, y down)."""

    def __init__(self, width: int, height: int) -> None:
        self.pixels = np.full((height, width, 3), 255, np.uint8)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Sequence[int]) -> None:
        """Fill a rectangle (clipped to the canvas)."""
        h, w, _ = self.pixels.shape
        xa, xb = sorted((round(x0), round(x1)))
        ya, yb = sorted((round(y0), round(y1)))
        self.pixels[max(ya, 0):min(yb + 1, h), max(xa, 0):min(xb + 1, w)] = color

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Sequence[int],
             width: int = 1, dash: int = 0) -> None:
        """A straight line, `width` pixels thick, dashed every `dash` pixels when given."""
        steps = max(int(math.hypot(x1 - x0, y1 - y0)), 1)
        for i in range(steps + 1):
            if dash and (i // dash) % 2:
                continue
            x, y = x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps
            self.rect(x - width // 2, y - width // 2, x + (width - 1) // 2,
                      y + (width - 1) // 2, color)

    def text(self, x: float, y: float, text: str, color: Sequence[int] = BLACK,
             scale: int = 2, anchor: str = "left") -> None:
        """Upper-case text in the bitmap font; `anchor` left, center or right of x."""
        text = text.upper()
        width = len(text) * 6 * scale
        x = x - width if anchor == "right" else x - width / 2 if anchor == "center" else x
        for i, char in enumerate(text):
            glyph = _GLYPHS.get(char, _GLYPHS[" "])
            for row, col in zip(*np.nonzero(glyph), strict=True):
                px, py = x + (i * 6 + col) * scale, y + row * scale
                self.rect(px, py, px + scale - 1, py + scale - 1, color)


def _tick(value: float) -> str:
    return f"{value:g}".upper()


def layer_error_plot(rows: list[dict], limit: float | None, title: str) -> bytes:
    """Per-layer relative error (attention, MoE, output; log scale) against the layer index,
    the per-layer limit as a dashed red line and every layer over it marked in red."""
    layers = [r for r in rows if isinstance(r.get("layer"), int)]
    series = {name: [(r["layer"], r.get("hidden" if name == "output" else name))
                     for r in layers] for name in SERIES}
    values = [v for points in series.values() for _, v in points if v is not None and v > 0]
    if limit:
        values.append(limit)
    low = math.floor(math.log10(min(values))) if values else -6
    high = math.ceil(math.log10(max(values))) if values else 0
    high = max(high, low + 1)
    canvas = Canvas(1000, 590)
    left, top, right, bottom = 130, 70, 960, 480
    count = max(len(layers), 1)

    def at(layer: float, value: float) -> tuple[float, float]:
        x = left + (right - left) * (layer + 0.5) / count
        y = bottom - (bottom - top) * (math.log10(max(value, 10.0 ** low)) - low) / (high - low)
        return x, y

    canvas.text(500, 8, title, anchor="center", scale=3)
    for exponent in range(low, high + 1):
        y = at(0, 10.0 ** exponent)[1]
        canvas.line(left, y, right, y, GREY)
        canvas.text(left - 10, y - 7, _tick(10.0 ** exponent), anchor="right")
    step = max(1, math.ceil(count / 16))
    for layer in range(0, count, step):
        canvas.text(at(layer, 1)[0], bottom + 12, str(layer), anchor="center")
    canvas.text((left + right) / 2, bottom + 40, "layer", anchor="center")
    canvas.text(20, top - 22, "relative error (log scale)")
    if limit:
        y = at(0, limit)[1]
        canvas.line(left, y, right, y, RED, width=2, dash=8)
        canvas.text(right, y - 20, f"limit {_tick(limit)}", RED, anchor="right")
    for row in layers:
        worst = max((row[k] for k in ("attention", "moe", "hidden") if row.get(k) is not None),
                    default=0.0)
        if limit is not None and worst > limit:
            layer = row["layer"]
            x = at(layer, 1)[0]
            canvas.rect(x - 3, top, x + 3, bottom, BAND)
            canvas.text(x, top + 4, f"!{layer}", RED, anchor="center")
    for name, color in SERIES.items():
        points = [at(layer, v) for layer, v in series[name] if v is not None]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            canvas.line(x0, y0, x1, y1, color, width=2)
        for x, y in points:
            canvas.rect(x - 3, y - 3, x + 3, y + 3, color)
    canvas.line(left, top, left, bottom, BLACK)
    canvas.line(left, bottom, right, bottom, BLACK)
    for i, (name, color) in enumerate(SERIES.items()):
        x = left + 20 + i * 220
        canvas.rect(x, 557, x + 24, 567, color)
        canvas.text(x + 34, 555, name)
    return png(canvas.pixels)


def _expert_linear(module: str) -> tuple[int, int, str] | None:
    """(layer, expert, gate|up|down) of an expert Linear's module name, in any name table."""
    for scheme in (s for a in ARCHITECTURES.values() for s in a.name_schemes.values()):
        found = scheme.locate(module, scheme.expert_roles)
        if found:
            role, layer, expert = found
            return layer, expert, role.removeprefix("moe_")
    return None


def _color(fraction: np.ndarray) -> np.ndarray:
    position = np.clip(fraction, 0, 1) * (len(_MAP) - 1)
    low = np.minimum(position.astype(int), len(_MAP) - 2)
    part = (position - low)[..., None]
    return (_MAP[low] * (1 - part) + _MAP[low + 1] * part).astype(np.uint8)


def expert_heatmap(errors: dict[str, float], title: str) -> bytes | None:
    """A layer x expert heat map of each expert Linear's relative error, one panel per
    projection (gate, up, down), one color scale; None when there are no expert Linears."""
    cells = {}
    for module, value in errors.items():
        where = _expert_linear(module)
        if where is not None:
            cells[where] = value
    if not cells:
        return None
    layers = max(k[0] for k in cells) + 1
    experts = max(k[1] for k in cells) + 1
    low_value, top_value = min(cells.values()), max(cells.values())
    span = (top_value - low_value) or 1.0
    cell = max(4, min(40, 480 // max(layers, 1)))
    width = max(3 * (experts * cell + 60) + 300, 760)
    height = layers * cell + 170
    canvas = Canvas(width, height)
    canvas.text(width / 2, 16, title, anchor="center", scale=3)
    for panel, role in enumerate(("gate", "up", "down")):
        x0, y0 = 90 + panel * (experts * cell + 60), 90
        canvas.text(x0 + experts * cell / 2, y0 - 30, role, anchor="center")
        for (layer, expert, name), value in cells.items():
            if name == role:
                color = _color(np.array((value - low_value) / span))
                canvas.rect(x0 + expert * cell, y0 + layer * cell,
                            x0 + (expert + 1) * cell - 2, y0 + (layer + 1) * cell - 2, color)
        step = max(1, math.ceil(layers / 16))
        for layer in range(0, layers, step):
            canvas.text(x0 - 8, y0 + layer * cell + cell / 2 - 7, str(layer), anchor="right")
        for expert in range(experts):
            canvas.text(x0 + expert * cell + cell / 2, y0 + layers * cell + 8, str(expert),
                        anchor="center")
        canvas.text(x0 + experts * cell / 2, y0 + layers * cell + 34, "expert",
                    anchor="center")
    canvas.text(8, 60, "layer")
    bar_x = width - 130
    for i in range(layers * cell):
        canvas.rect(bar_x, 90 + i, bar_x + 20, 90 + i,
                    _color(np.array(1 - i / max(layers * cell - 1, 1))))
    canvas.text(bar_x + 28, 84, _tick(float(f"{top_value:.3g}")))
    canvas.text(bar_x + 28, 90 + layers * cell - 12, _tick(float(f"{low_value:.3g}")))
    canvas.text(width - 10, 60, "relative rms error", anchor="right")
    return png(canvas.pixels)
