"""Where results go: safe per-pair folder names, per-pair images, and an all-or-nothing
output directory.

Nothing half-written (decision): every output is written into a temporary directory
next to ``--out_dir`` (``rfnet_tf.staging.staged_directory``); only when all of it is
written does that directory take ``--out_dir``'s place (the previous results, if any,
are moved aside and deleted). On any error or signal the temporary directory is removed
and ``--out_dir`` is left as it was. An existing ``--out_dir`` is replaced only if it is
empty or holds earlier results (a ``results.json``), so a mistyped ``--out_dir`` never
deletes unrelated files; it must not be (or hold) the current directory.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from rfnet_tf import staging, visualize
from rfnet_tf.evaluation.methods import luma_255
from rfnet_tf.staging import DestinationError, check_destination

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
# The cumulative share of pairs registered within each landmark RMSE, per method.
SUCCESS_PLOT = "registration_success.png"
IMAGES_DIR = "images"
PANEL_TILE_WIDTH = 480
PANEL_COLUMNS = 4
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_folder_name(name: str) -> str:
    """A pair name as one safe path component.

    Path separators become ``__`` (``"field/0001"`` -> ``"field__0001"``), other
    characters outside ``[A-Za-z0-9._-]`` become ``_``, and each part loses its leading
    dots (no hidden folders, no ``.``/``..``); an empty result becomes ``"pair"``.
    """
    parts = [_UNSAFE.sub("_", part).lstrip(".") for part in re.split(r"[/\\]+", name)]
    return "__".join(part for part in parts if part) or "pair"


def unique_folder_names(names: Sequence[str]) -> list[str]:
    """:func:`safe_folder_name` of each name, made unique by a ``-2``, ``-3``... suffix
    (case-insensitively, for case-insensitive file systems)."""
    taken: set[str] = set()
    folders = []
    for name in names:
        base = safe_folder_name(name)
        folder, index = base, 1
        while folder.lower() in taken:
            index += 1
            folder = f"{base}-{index}"
        taken.add(folder.lower())
        folders.append(folder)
    return folders


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir``, made absolute, if a new results directory may take its place.

    Raises:
      DestinationError: as ``rfnet_tf.staging.check_destination`` (a file, the current
        directory or one holding it, a parent that cannot be written), or ``out_dir`` is
        a non-empty directory without ``results.json`` (not an earlier results
        directory).
    """
    out_dir = check_destination(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / RESULTS_JSON).is_file():
        raise DestinationError(
            f"{out_dir}: exists, is not empty and holds no {RESULTS_JSON} (not an earlier "
            "results directory); refusing to replace it: choose another --out_dir"
        )
    return out_dir


@contextlib.contextmanager
def staged_directory(out_dir: str | os.PathLike) -> Iterator[Path]:
    """``rfnet_tf.staging.staged_directory`` for a results directory (:func:`check_out_dir`)."""
    with staging.staged_directory(check_out_dir(out_dir)) as directory:
        yield directory


def _tile_shape(height: int, width: int) -> tuple[int, int]:
    """Panel tile size: at most :data:`PANEL_TILE_WIDTH` wide, aspect ratio kept."""
    scale = min(1.0, PANEL_TILE_WIDTH / width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def save_pair_images(
    folder: Path,
    moving_vis: np.ndarray,
    nir: np.ndarray,
    registered_vis: np.ndarray,
    fused_rgb: np.ndarray | None,
    flow: np.ndarray | None,
    registration_method: str,
    fusion_method: str | None,
    tiles: int,
    flow_method: str | None = None,
) -> dict[str, str]:
    """Writes one pair's images into ``folder``; returns ``{kind: file name}``.

    Files: ``registered_vis.png`` (the VIS registered by ``registration_method``),
    ``fused_rgb.png`` (the fusion by ``fusion_method``; only when ``fused_rgb`` is
    given), ``checkerboard_before.png`` / ``checkerboard_after.png`` (VIS
    luma against NIR in ``tiles x tiles`` tiles, before and after registration),
    ``flow.png`` (the dense flow of ``flow_method`` as colour: hue = direction,
    brightness = magnitude relative to its maximum; only when ``flow`` is given) and
    ``panel.png``, all of them side by side with labels; the panel's flow tile carries
    the colour wheel of that scale (``visualize.with_flow_legend``).

    Args:
      moving_vis: ``(H, W, C)`` moving VIS in ``[0, 1]``.
      nir: ``(H, W, 1)`` NIR in ``[0, 1]``.
      registered_vis: ``(H, W, C)`` registered VIS in ``[0, 1]``.
      fused_rgb: ``(H, W, 3)`` in ``[0, 1]``, or ``None``.
      flow: ``(H, W, 2)`` ``(dy, dx)`` px, or ``None``.
      flow_method: the registration method whose flow it is, for the label.
    """
    before = visualize.checkerboard(luma_255(moving_vis) / 255.0, nir, tiles)
    after = visualize.checkerboard(luma_255(registered_vis) / 255.0, nir, tiles)
    images = {
        "registered_vis": registered_vis,
        "checkerboard_before": before,
        "checkerboard_after": after,
    }
    panel = {
        "VIS (moving)": moving_vis,
        "NIR (fixed)": nir,
        "before: VIS / NIR": before,
        f"after ({registration_method}): VIS / NIR": after,
        f"registered VIS ({registration_method})": registered_vis,
    }
    if fused_rgb is not None:
        images["fused_rgb"] = fused_rgb
        panel[f"fused ({fusion_method})"] = fused_rgb
    tile_shape = _tile_shape(*nir.shape[:2])
    if flow is not None:
        images["flow"] = visualize.flow_to_rgb(flow)
        magnitude = float(np.hypot(flow[..., 0], flow[..., 1]).max())
        # The legend is drawn at the tile's size, so that it reads the same on any image.
        tile = visualize.resize_image(images["flow"], tile_shape)
        name = "flow" + (f" ({flow_method})" if flow_method else "")
        panel[f"{name}, max {magnitude:.2f} px"] = visualize.with_flow_legend(tile, magnitude)
    files = {kind: _save(folder, kind, image) for kind, image in images.items()}
    files["panel"] = _save(
        folder,
        "panel",
        visualize.result_panel(panel, ncols=PANEL_COLUMNS, tile_shape=tile_shape),
    )
    return files


def _save(folder: Path, kind: str, image: np.ndarray) -> str:
    name = f"{kind}.png"
    visualize.save_png(folder / name, image)
    return name
