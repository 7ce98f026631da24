"""Result visualisation (numpy / OpenCV): checkerboards, flow colours and their colour
wheel, labelled panels, cumulative plots, PNGs.

Images are ``(H, W)`` grey or ``(H, W, 3)`` RGB (channel order RGB everywhere; the
conversion to OpenCV's BGR happens only inside ``save_png``). Float images are taken to
be on the project's ``[0, 1]`` scale unless a ``data_range`` says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from rfnet_tf.staging import write_atomically

LABEL_HEIGHT_PX = 24
LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Series colours of plots (RGB): matplotlib's "tab10" cycle, distinct and colour-blind aware.
PLOT_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
# Cumulative plot layout (px): the plot area's margins, the legend to its right.
_PLOT_MARGINS = {"left": 56, "right": 200, "top": 40, "bottom": 52}
_PLOT_TEXT = (40, 40, 40)
_PLOT_GRID = (225, 225, 225)
_PLOT_MARK = (150, 150, 150)
# The flow legend (with_flow_legend): the colour wheel's radius and the gaps around it.
FLOW_LEGEND_RADIUS_PX = 24
FLOW_LEGEND_MARGIN_PX = 4


def to_uint8(image, data_range: float = 1.0) -> np.ndarray:
    """Image -> ``uint8`` for display or saving, same shape.

    ``uint8`` is returned unchanged; ``bool`` maps to 0/255; ``uint16`` is scaled by
    255/65535; anything else is treated as float on ``[0, data_range]``, scaled to
    0-255, rounded half up and clipped (NaN becomes 0).
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype == np.uint16:
        return np.floor(image.astype(np.float64) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    scaled = np.nan_to_num(image.astype(np.float64) * (255.0 / data_range), nan=0.0)
    return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def _squeeze_channel(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] == 1:
        return image[..., 0]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3):
        return image
    raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {image.shape}")


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = _squeeze_channel(image)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def checkerboard(a, b, tiles: int = 8) -> np.ndarray:
    """Interleave two same-size images in a ``tiles x tiles`` checkerboard.

    Tile ``(i, j)`` (row, column) comes from ``a`` when ``i + j`` is even, from ``b``
    otherwise; row ``r`` lies in tile ``r * tiles // H`` (likewise columns), so tiles
    differ in size by at most one pixel. A grey and an RGB image are combined in RGB.
    The result has the two inputs' common dtype.

    Args:
      a, b: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``.
      tiles: tiles along each axis (>= 1).
    """
    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    a = _squeeze_channel(np.asarray(a))
    b = _squeeze_channel(np.asarray(b))
    if a.ndim != b.ndim:
        a, b = _to_rgb(a), _to_rgb(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    height, width = a.shape[:2]
    tile_row = np.arange(height) * tiles // height
    tile_col = np.arange(width) * tiles // width
    from_a = (tile_row[:, None] + tile_col[None, :]) % 2 == 0
    if a.ndim == 3:
        from_a = from_a[..., None]
    dtype = np.result_type(a.dtype, b.dtype)
    return np.where(from_a, a, b).astype(dtype)


def flow_to_rgb(flow, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-code a flow ``(H, W, 2)`` ``(dy, dx)`` as ``uint8`` RGB ``(H, W, 3)`` (HSV).

    Hue is the direction ``atan2(dy, dx)`` in image coordinates (y down): 0 deg = right
    (red), 90 deg = down, 180 deg = left (cyan), 270 deg = up. Saturation is 1. Value is
    the magnitude divided by ``max_magnitude`` (default: the largest magnitude in the
    field), clipped to 1; zero flow is therefore black.
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (H, W, 2) as (dy, dx), got {flow.shape}")
    dy, dx = flow[..., 0], flow[..., 1]
    magnitude = np.hypot(dy, dx)
    if max_magnitude is None:
        max_magnitude = float(magnitude.max())
    if max_magnitude <= 0:
        max_magnitude = 1.0
    hue = np.degrees(np.arctan2(dy, dx)) % 360.0
    value = np.clip(magnitude / max_magnitude, 0.0, 1.0)
    hsv = np.stack([hue, np.ones_like(hue), value], axis=-1).astype(np.float32)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return to_uint8(rgb)


def flow_colour_wheel(max_magnitude: float, radius: int) -> np.ndarray:
    """The key of ``flow_to_rgb(flow, max_magnitude)``: ``(2r + 1, 2r + 1, 3)`` uint8.

    The pixel at ``(dy, dx)`` from the centre (``r = radius`` px from each edge) shows
    the colour of the displacement ``(dy, dx) * max_magnitude / radius``: black at the
    centre, ``max_magnitude`` (full brightness) on the rim, hue by direction (right red,
    down yellow-green, left cyan). Pixels outside the disc are black.
    """
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    flow = np.stack([dy, dx], axis=-1) * (max_magnitude / radius)
    wheel = flow_to_rgb(flow, max_magnitude)
    wheel[np.hypot(dy, dx) > radius] = 0
    return wheel


def with_flow_legend(
    image: np.ndarray, max_magnitude: float, radius: int = FLOW_LEGEND_RADIUS_PX
) -> np.ndarray:
    """A flow image with its scale: ``flow_colour_wheel(max_magnitude, r)`` in the
    bottom-right corner, on a black box :data:`FLOW_LEGEND_MARGIN_PX` from both edges,
    ringed in grey and labelled above with the rim's magnitude in px (where the label
    fits in half the image's width).

    Args:
      image: ``(H, W, 3)`` uint8, ``flow_to_rgb(flow, max_magnitude)``.
      max_magnitude: what its full brightness stands for, px.
      radius: the wheel's radius, px; smaller (at least 2) on an image of under
        ``6 * radius`` px a side.

    Returns:
      A copy of ``image`` with the legend drawn over its corner.
    """
    image = np.array(image, dtype=np.uint8)
    height, width = image.shape[:2]
    radius = max(2, min(radius, min(height, width) // 6))
    text = f"{max_magnitude:.2f} px"
    scale = 0.4
    (text_width, text_height), baseline = cv2.getTextSize(text, LABEL_FONT, scale, 1)
    margin = FLOW_LEGEND_MARGIN_PX
    labelled = text_width + 2 * margin <= width // 2
    diameter = 2 * radius + 1
    box_width = max(diameter, text_width if labelled else 0) + 2 * margin
    box_height = diameter + 2 * margin + (text_height + baseline + margin if labelled else 0)
    image[max(0, height - box_height) :, max(0, width - box_width) :] = 0
    wheel_top, wheel_left = height - margin - diameter, width - margin - diameter
    wheel = flow_colour_wheel(max_magnitude, radius)
    image[wheel_top : wheel_top + diameter, wheel_left : wheel_left + diameter] = wheel
    cv2.circle(image, (wheel_left + radius, wheel_top + radius), radius + 1, _PLOT_MARK, 1)
    if labelled:
        origin = (width - margin - text_width, wheel_top - margin - baseline)
        cv2.putText(image, text, origin, LABEL_FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``shape = (H, W)`` (area averaging when shrinking, bilinear
    otherwise); returned as it is when it has that size already."""
    if image.shape[:2] == tuple(shape):
        return image
    shrinking = image.shape[0] > shape[0] or image.shape[1] > shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (shape[1], shape[0]), interpolation=interpolation)


def save_png(path, image, data_range: float = 1.0) -> Path:
    """Write ``image`` as an 8-bit PNG atomically; returns the path.

    The image goes through ``to_uint8(image, data_range)``, is encoded in memory and
    written with ``rfnet_tf.staging.write_atomically`` (a reader never sees a
    half-written file; parent folders are created; ordinary permissions).
    """
    path = Path(path)
    image = _squeeze_channel(to_uint8(image, data_range))
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    return write_atomically(path, encoded.tobytes())


def _label_strip(text: str, width: int) -> np.ndarray:
    strip = np.zeros((LABEL_HEIGHT_PX, width, 3), np.uint8)
    scale = 0.5
    (text_width, _), _ = cv2.getTextSize(text, LABEL_FONT, scale, 1)
    if text_width > width - 8:
        scale *= max(width - 8, 1) / text_width
    origin = (4, LABEL_HEIGHT_PX - 8)
    cv2.putText(strip, text, origin, LABEL_FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def result_panel(
    images: dict[str, np.ndarray],
    ncols: int = 3,
    tile_shape: tuple[int, int] | None = None,
    data_range: float = 1.0,
) -> np.ndarray:
    """Labelled tiles side by side: ``uint8`` RGB panel.

    Each image (grey or RGB, converted with ``to_uint8(image, data_range)``) is resized
    to ``tile_shape = (H, W)`` (default: the first image's size) and drawn below a
    black strip of ``LABEL_HEIGHT_PX`` rows holding its key as white text
    (``cv2.putText``). Tiles fill rows of ``ncols`` in the dict's order; unused cells
    are black.

    Returns:
      ``(rows * (LABEL_HEIGHT_PX + H), ncols * W, 3)`` uint8, ``rows = ceil(n / ncols)``.
    """
    if not images:
        raise ValueError("no images to show")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    tiles = {name: _to_rgb(to_uint8(image, data_range)) for name, image in images.items()}
    if tile_shape is None:
        tile_shape = next(iter(tiles.values())).shape[:2]
    height, width = int(tile_shape[0]), int(tile_shape[1])
    ncols = min(ncols, len(tiles))
    nrows = -(-len(tiles) // ncols)
    cell_height = LABEL_HEIGHT_PX + height
    panel = np.zeros((nrows * cell_height, ncols * width, 3), np.uint8)
    for index, (name, tile) in enumerate(tiles.items()):
        tile = resize_image(tile, (height, width))
        top = (index // ncols) * cell_height
        left = (index % ncols) * width
        panel[top : top + LABEL_HEIGHT_PX, left : left + width] = _label_strip(name, width)
        panel[top + LABEL_HEIGHT_PX : top + cell_height, left : left + width] = tile
    return panel


def _log_ticks(low: float, high: float) -> list[float]:
    """1, 2 and 5 times the powers of ten in ``[low, high]``."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1.0, 2.0, 5.0):
            value = mantissa * 10.0**exponent
            if low * (1 - 1e-9) <= value <= high * (1 + 1e-9):
                ticks.append(value)
    return ticks


def linear_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) spanning
    ``[low, high]`` and covering it."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(factor * power for factor in (1, 2, 5, 10) if factor * power >= raw)
    first = math.floor(low / step + 1e-9) * step
    return [first + index * step for index in range(math.ceil((high - first) / step - 1e-9) + 1)]


class _PlotFrame:
    """A white plot image with its plot area (``_PLOT_MARGINS``), axes and legend.

    ``column(value)`` and ``row(value)`` map data to pixels (``x_log``: a logarithmic x
    axis); the axes get grid lines at the ticks, labelled with ``x_format`` /
    ``y_format``; series go in :data:`PLOT_COLOURS`, in order, without anti-aliasing so
    that their pixels carry exactly that colour.
    """

    def __init__(self, shape, x_range, y_range, x_log=False):
        height, width = shape
        self.image = np.full((height, width, 3), 255, np.uint8)
        self.left, self.top = _PLOT_MARGINS["left"], _PLOT_MARGINS["top"]
        self.right = width - _PLOT_MARGINS["right"]
        self.bottom = height - _PLOT_MARGINS["bottom"]
        self.x_range, self.y_range, self.x_log = x_range, y_range, x_log
        self.series = 0

    def column(self, value: float) -> int:
        low, high = self.x_range
        if self.x_log:
            value, low, high = math.log10(value), math.log10(low), math.log10(high)
        return round(self.left + (value - low) / (high - low) * (self.right - self.left))

    def row(self, value: float) -> int:
        low, high = self.y_range
        return round(self.bottom - (value - low) / (high - low) * (self.bottom - self.top))

    def text(self, words: str, origin: tuple[int, int], scale: float = 0.45) -> None:
        cv2.putText(self.image, words, origin, LABEL_FONT, scale, _PLOT_TEXT, 1, cv2.LINE_AA)

    def axes(self, x_ticks, y_ticks, x_label, y_label, x_format="{:g}", y_format="{:g}"):
        for tick in y_ticks:
            row = self.row(tick)
            cv2.line(self.image, (self.left, row), (self.right, row), _PLOT_GRID, 1)
            self.text(y_format.format(tick), (6, row + 5))
        for tick in x_ticks:
            column = self.column(tick)
            cv2.line(self.image, (column, self.top), (column, self.bottom), _PLOT_GRID, 1)
            self.text(x_format.format(tick), (column - 8, self.bottom + 18))
        cv2.rectangle(self.image, (self.left, self.top), (self.right, self.bottom), _PLOT_TEXT, 1)
        height = self.image.shape[0]
        self.text(x_label, ((self.left + self.right) // 2 - 60, height - 10), 0.5)
        self.text(y_label, (self.left, self.top - 12), 0.5)

    def vertical(self, value: float) -> None:
        column = self.column(value)
        cv2.line(self.image, (column, self.top), (column, self.bottom), _PLOT_MARK, 1)

    def line(self, label: str, columns, rows) -> None:
        """A series through pixel points, and its legend entry right of the plot."""
        colour = PLOT_COLOURS[self.series]
        points = np.stack([columns, rows], axis=1).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(self.image, [points], False, colour, 2)
        legend_top = self.top + 22 * self.series
        cv2.line(self.image, (self.right + 14, legend_top + 6), (self.right + 40, legend_top + 6), colour, 2)
        self.text(label, (self.right + 46, legend_top + 11))
        self.series += 1


def _check_series_count(series) -> None:
    if len(series) > len(PLOT_COLOURS):
        raise ValueError(f"at most {len(PLOT_COLOURS)} series, got {len(series)}")


def cumulative_share_plot(
    series: dict[str, Sequence[float]],
    x_label: str,
    x_range: tuple[float, float] = (0.1, 100.0),
    marks: Sequence[float] = (2.0, 5.0, 10.0),
    shape: tuple[int, int] = (420, 860),
) -> np.ndarray:
    """A plot of each series' cumulative share: the fraction of its values at most ``x``.

    ``x`` runs over ``x_range`` on a logarithmic axis (ticks at 1, 2 and 5 times the
    powers of ten; grey verticals at ``marks``), the share from 0 % (bottom) to 100 %
    (top), linearly. Each series is a step line in its colour (:data:`PLOT_COLOURS`,
    in order), drawn without anti-aliasing so that its pixels carry exactly that colour;
    the legend is to the right of the plot. Values below ``x_range[0]`` count from the
    left edge on, values above ``x_range[1]`` never; an empty series is a flat 0 %.

    Args:
      series: ``{label: values}``, e.g. per method the pairs' landmark RMSE in px.
      x_label: the x axis' label.
      x_range: ``(low, high)``, both positive.
      marks: values to mark with a vertical line (e.g. success thresholds).
      shape: ``(H, W)`` of the image.

    Returns:
      ``(H, W, 3)`` uint8 RGB on white.
    """
    low, high = x_range
    if not 0 < low < high:
        raise ValueError(f"x_range must be two increasing positive values, got {x_range}")
    _check_series_count(series)
    frame = _PlotFrame(shape, x_range, (0.0, 1.0), x_log=True)
    frame.axes(_log_ticks(low, high), np.linspace(0.0, 1.0, 6), x_label,
               "share of pairs within x", y_format="{:.0%}")
    for mark in marks:
        if low <= mark <= high:
            frame.vertical(mark)
    columns = np.arange(frame.left, frame.right + 1)
    span = math.log10(high) - math.log10(low)
    thresholds = 10.0 ** (math.log10(low) + (columns - frame.left) / (frame.right - frame.left) * span)
    for label, values in series.items():
        values = np.asarray(values, dtype=np.float64)
        shares = (
            (values[:, None] <= thresholds[None, :]).mean(axis=0)
            if values.size
            else np.zeros(len(columns))
        )
        rows = np.array([frame.row(share) for share in shares])
        # A step line: at each column, first the previous level, then the new one.
        frame.line(label, np.repeat(columns, 2)[1:], np.stack([np.roll(rows, 1), rows], axis=1).ravel()[1:])
    return frame.image


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    shape: tuple[int, int] = (420, 860),
) -> np.ndarray:
    """A plot of each series ``{label: (x, y)}`` as a line through its points, on linear
    axes with round ticks (the y axis over ``y_range``, default the data's), the legend
    to the right of the plot (e.g. a learning curve).

    Returns:
      ``(H, W, 3)`` uint8 RGB on white.
    """
    _check_series_count(series)
    xs = np.concatenate([np.asarray(x, np.float64) for x, _ in series.values()])
    ys = np.concatenate([np.asarray(y, np.float64) for _, y in series.values()])
    x_ticks = linear_ticks(float(xs.min()), float(xs.max()))
    y_ticks = linear_ticks(*(y_range or (float(ys.min()), float(ys.max()))))
    frame = _PlotFrame(shape, (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1]))
    frame.axes(x_ticks, y_ticks, x_label, y_label)
    for label, (x, y) in series.items():
        frame.line(label, [frame.column(v) for v in x], [frame.row(v) for v in y])
    return frame.image
