"""Line plots as PNG images, drawn with Pillow (no plotting library needed).

:func:`line_plot` draws one or more ``(x, y)`` series on shared linear axes with tick
labels, axis titles and a legend; it serves the learning curves of the training runs
and the cumulative error plots of the evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Colour-blind-safe palette (Okabe and Ito), cycled over the series.
PALETTE = ((0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233),
           (213, 94, 0), (240, 228, 66), (0, 0, 0))
_SIZE = (800, 500)
_MARGIN = (70, 20, 42, 40)  # left, right, top, bottom, px


def nice_ticks(low: float, high: float, count: int = 6) -> np.ndarray:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten)
    covering ``[low, high]``."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    return np.arange(first, last + step / 2, step)


def _label(value: float) -> str:
    return f"{value:g}"


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    steps: bool = False,
) -> Path:
    """Writes a PNG with one line per series.

    Args:
      series: ``{label: (x, y)}``, equal-length sequences; NaN values are skipped.
      path: the PNG file to write.
      title, x_label, y_label: texts of the plot.
      y_range: the y axis limits (default: the data's, rounded to ticks).
      steps: draw each series as a staircase (a cumulative distribution) instead of
        straight segments.

    Returns:
      ``path``.
    """
    points = {
        label: np.asarray([x, y], np.float64).reshape(2, -1) for label, (x, y) in series.items()
    }
    finite = [p[:, np.isfinite(p).all(axis=0)] for p in points.values()]
    xs = np.concatenate([p[0] for p in finite]) if finite else np.zeros(1)
    ys = np.concatenate([p[1] for p in finite]) if finite else np.zeros(1)
    x_ticks = nice_ticks(float(xs.min()), float(xs.max()))
    y_ticks = nice_ticks(*(y_range or (float(ys.min()), float(ys.max()))))
    (x0, x1), (y0, y1) = (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1])
    if y_range is not None:
        y0, y1 = y_range
        y_ticks = y_ticks[(y_ticks >= y0 - 1e-9) & (y_ticks <= y1 + 1e-9)]
    left, right, top, bottom = _MARGIN
    width, height = _SIZE
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_pixel(x, y):
        return (left + (x - x0) / (x1 - x0) * plot_w, top + (1 - (y - y0) / (y1 - y0)) * plot_h)

    image = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for tick in x_ticks:
        px, _ = to_pixel(tick, y0)
        draw.line([(px, top), (px, top + plot_h)], fill=(230, 230, 230))
        draw.text((px, top + plot_h + 4), _label(tick), fill="black", font=font, anchor="ma")
    for tick in y_ticks:
        _, py = to_pixel(x0, tick)
        draw.line([(left, py), (left + plot_w, py)], fill=(230, 230, 230))
        draw.text((left - 6, py), _label(tick), fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    draw.text((left + plot_w / 2, 6), title, fill="black", font=font, anchor="ma")
    draw.text((left + plot_w / 2, height - 16), x_label, fill="black", font=font, anchor="ma")
    draw.text((left, top - 8), y_label, fill="black", font=font, anchor="ls")
    for index, (label, data) in enumerate(zip(points, finite)):
        colour = PALETTE[index % len(PALETTE)]
        x, y = np.clip(data[0], x0, x1), np.clip(data[1], y0, y1)
        if steps and len(x):
            x, y = np.repeat(x, 2)[1:], np.repeat(y, 2)[:-1]
        line = [to_pixel(a, b) for a, b in zip(x, y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for px, py in line if not steps else []:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        legend_y = top + 8 + 16 * index
        draw.line([(left + 10, legend_y), (left + 30, legend_y)], fill=colour, width=3)
        draw.text((left + 36, legend_y), label, fill="black", font=font, anchor="lm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
