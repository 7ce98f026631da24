"""Result visualisation (numpy / OpenCV): checkerboards, flow colours, labelled panels, PNGs.

Images are ``(H, W)`` grey or ``(H, W, 3)`` RGB (channel order RGB everywhere; the
conversion to OpenCV's BGR happens only inside ``save_png``). Float images are taken to
be on the project's ``[0, 1]`` scale unless a ``data_range`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from rfnet_tf.staging import write_atomically

LABEL_HEIGHT_PX = 24
LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX


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
        if tile.shape[:2] != (height, width):
            shrinking = tile.shape[0] > height or tile.shape[1] > width
            interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
            tile = cv2.resize(tile, (width, height), interpolation=interpolation)
        top = (index // ncols) * cell_height
        left = (index % ncols) * width
        panel[top : top + LABEL_HEIGHT_PX, left : left + width] = _label_strip(name, width)
        panel[top + LABEL_HEIGHT_PX : top + cell_height, left : left + width] = tile
    return panel
