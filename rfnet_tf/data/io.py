"""Readers for real VIS / NIR image pairs and landmark files.

Every reader returns :class:`Pair` records holding ``float32`` images in ``[0, 1]``
(ARCHITECTURE section 1: 8-bit files are divided by 255, 16-bit files by 65535, float
TIFFs are taken as they are if they lie in ``[0, 1]``). The VIS image is ``(H, W, 3)``
(RGB) or ``(H, W, 1)`` (grey), the NIR image ``(H, W, 1)``. Landmarks are ``(N, 2)``
float ``(y, x)`` zero-based pixel coordinates, pixel centres on integers.

Layouts (see :func:`read_dataset`):

* ``"pairs"``: two folders (default ``vis/`` and ``nir/``; RoadScene uses ``ir/``)
  holding files with the same stem, e.g. ``vis/scene_1.png`` and ``nir/scene_1.png``.
* ``"nirscene"``: the RGB-NIR Scene data set's own layout, category folders (e.g.
  ``country/``, ``field/``) holding ``NNNN_rgb.tiff`` and ``NNNN_nir.tiff``; the pair
  is named ``"category/NNNN"``.
* ``"known_affine"``: the VIS-NIR registration benchmark built on RGB-NIR Scene: the
  ``"nirscene"`` layout whose NIR images were warped by a known affine, stored beside
  each as ``NNNN_nir.npy`` (:func:`read_known_affine`).
* ``"landmarks"``: a folder of MATLAB ``.mat`` files, each holding one pair with
  landmarks (keys ``I_move``, ``I_fix``, ``LMmove``, ``LMfix``).

Bad input raises :class:`~rfnet_tf.data.errors.DataError` naming the file. Folder
readers decode every file once up front and report all problems in one error before
anything else starts; with ``skip_bad=True`` they skip the bad pairs and log them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import scipy.io
import tifffile
from absl import logging
from PIL import Image

from rfnet_tf import colour
from rfnet_tf.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_KINDS = ("vis", "nir")
LANDMARK_KEYS = ("I_move", "I_fix", "LMmove", "LMfix")
NIRSCENE_SUFFIXES = {"_rgb": "vis", "_nir": "nir"}
KNOWN_AFFINE_SUFFIX = ".npy"
# A known affine whose 2x2 part has a smaller determinant cannot be inverted usefully
# (the benchmark's scales are 0.9-1.1, determinants about 0.8-1.2).
MIN_AFFINE_DETERMINANT = 1e-6

# Pillow decodes 16-bit colour PNGs to 8 bits without a word; their raw modes give
# them away before decoding, and OpenCV reads them at full depth.
_PILLOW_LOSSY_PNG_RAWMODES = ("RGB;16B", "RGBA;16B", "LA;16B")
# Colour channels that differ by no more than this are one grey image stored as colour.
_GREY_TOLERANCE = 3 / 255
# Pillow modes that are not plain grey / RGB arrays, and what to convert them to.
_PILLOW_CONVERSIONS = {"1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


@dataclasses.dataclass(eq=False)
class Pair:
    """One VIS / NIR image pair of the same scene.

    Attributes:
      name: the pair's name (the file stem; ``"category/NNNN"`` for RGB-NIR Scene).
      vis: ``(H, W, 3)`` RGB or ``(H, W, 1)`` grey, ``float32`` in ``[0, 1]``: the
        moving image.
      nir: ``(H, W, 1)`` ``float32`` in ``[0, 1]``: the fixed image.
      vis_path, nir_path: the files read (both the ``.mat`` file for landmark files;
        ``None`` for images made in memory).
      vis_points, nir_points: optional ``(N, 2)`` float landmarks, ``(y, x)``
        zero-based pixel coordinates; row ``i`` of each marks the same scene point.
      known_affine: the ``"known_affine"`` layout's ``(2, 3)`` float64 matrix ``M``,
        OpenCV's forward pixel convention on ``[x, y, 1]``, from the VIS to the NIR:
        ``cv2.warpAffine(vis, M, (W, H))`` lays the VIS onto the NIR; else ``None``.
    """

    name: str
    vis: np.ndarray
    nir: np.ndarray
    vis_path: Path | None = None
    nir_path: Path | None = None
    vis_points: np.ndarray | None = None
    nir_points: np.ndarray | None = None
    known_affine: np.ndarray | None = None

    def __post_init__(self):
        where = f"pair {self.name!r}" + (
            f" ({self.vis_path}, {self.nir_path})" if self.vis_path else ""
        )
        if self.vis.ndim != 3 or self.vis.shape[-1] not in (1, 3):
            raise DataError(
                f"{where}: VIS has shape {self.vis.shape}; expected (H, W, 1) or (H, W, 3)"
            )
        if self.nir.ndim != 3 or self.nir.shape[-1] != 1:
            raise DataError(f"{where}: NIR has shape {self.nir.shape}; expected (H, W, 1)")
        if self.vis.shape[:2] != self.nir.shape[:2]:
            raise DataError(
                f"{where}: sizes differ: VIS is {self.vis.shape[0]}x{self.vis.shape[1]}, "
                f"NIR is {self.nir.shape[0]}x{self.nir.shape[1]} (height x width)"
            )
        if (self.vis_points is None) != (self.nir_points is None):
            raise DataError(f"{where}: landmarks are given for one image only")
        if self.has_landmarks and not (
            self.vis_points.ndim == 2
            and self.vis_points.shape[1] == 2
            and self.vis_points.shape == self.nir_points.shape
        ):
            raise DataError(
                f"{where}: landmarks of shapes {self.vis_points.shape} and "
                f"{self.nir_points.shape}; expected two (N, 2) arrays"
            )

    @property
    def height(self) -> int:
        return int(self.nir.shape[0])

    @property
    def width(self) -> int:
        return int(self.nir.shape[1])

    @property
    def has_landmarks(self) -> bool:
        return self.vis_points is not None and self.nir_points is not None


def read_image(path: str | Path, kind: str = "vis") -> np.ndarray:
    """Reads one image as ``float32`` in ``[0, 1]``.

    PNG, JPEG and BMP are decoded with Pillow (16-bit colour PNGs with OpenCV, which
    keeps their depth); TIFF with tifffile (16-bit RGB, float samples, planar layouts).
    8-bit samples are divided by 255, 16-bit by 65535; float samples must be finite and
    lie in ``[0, 1]``.

    Args:
      path: the image file.
      kind: ``"vis"``: grey or RGB, an alpha channel is dropped; ``"nir"``: grey, a
        3-channel file is reduced to its BT.601 luma (with a logged warning).

    Returns:
      ``(H, W, C)`` ``float32``: ``C`` is 1 or 3 for VIS, 1 for NIR.

    Raises:
      DataError: the file is missing, unreadable, truncated, not an image, holds
        NaN / Inf or out-of-range floats, an unsupported sample type or a wrong
        channel count. The message names the file.
    """
    if kind not in IMAGE_KINDS:
        raise ValueError(f"kind must be one of {IMAGE_KINDS}, got {kind!r}")
    path = Path(path)
    return _to_kind_channels(_read_samples(path), kind, path)


def _read_samples(path: Path) -> np.ndarray:
    """The file's samples as ``(H, W, C)`` ``float32`` in ``[0, 1]``, channels as stored
    (:func:`read_image` without the channel rules)."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            array = _decode_tiff(path)
        else:
            array = _decode_with_pillow(path)
    except DataError:
        raise
    except Exception as error:  # Decoders raise many types; all mean "not a readable image".
        raise DataError(
            f"{path}: cannot be decoded as an image (unreadable, truncated or not an "
            f"image file): {type(error).__name__}: {error}"
        ) from error
    return _to_unit_float(array, path)


def read_pair(vis_path: str | Path, nir_path: str | Path, name: str | None = None) -> Pair:
    """Reads a VIS and a NIR file of the same size into a :class:`Pair`.

    ``name`` defaults to the VIS file's stem. Raises :class:`DataError` naming both
    files and both sizes when the sizes differ. Logs a warning when the VIS file holds no
    colour (one channel, or three equal ones) and the NIR file does: the two are likely
    swapped.
    """
    vis_path, nir_path = Path(vis_path), Path(nir_path)
    vis, nir = _read_samples(vis_path), _read_samples(nir_path)
    if _is_colourless(vis) and not _is_colourless(nir):
        logging.warning(
            "%s (the VIS) holds no colour but %s (the NIR) does: are the two swapped?",
            vis_path,
            nir_path,
        )
    vis = _to_kind_channels(vis, "vis", vis_path)
    nir = _to_kind_channels(nir, "nir", nir_path)
    if vis.shape[:2] != nir.shape[:2]:
        raise DataError(
            f"{vis_path} and {nir_path}: sizes differ: VIS is {vis.shape[0]}x{vis.shape[1]}, "
            f"NIR is {nir.shape[0]}x{nir.shape[1]} (height x width)"
        )
    return Pair(
        name=vis_path.stem if name is None else name,
        vis=vis,
        nir=nir,
        vis_path=vis_path,
        nir_path=nir_path,
    )


def read_pair_folder(
    root: str | Path, vis_dir: str = "vis", nir_dir: str = "nir", skip_bad: bool = False
) -> list[Pair]:
    """Reads the ``"pairs"`` layout: ``root/vis_dir`` and ``root/nir_dir``, same stems.

    Files are matched by stem (the suffixes may differ, e.g. ``a.jpg`` / ``a.png``);
    files whose suffix is not in :data:`IMAGE_SUFFIXES` are ignored. Pairs come sorted
    by name.

    Raises:
      DataError: a folder is missing or holds no images; or (unless ``skip_bad``) some
        stems are present in one folder only, two files share a stem, or a pair is bad.
        Every problem is listed in one error. With ``skip_bad`` the bad pairs are
        skipped and logged, and only "nothing readable" raises.
    """
    root = Path(root)
    vis_folder, nir_folder = root / vis_dir, root / nir_dir
    for folder in (vis_folder, nir_folder):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found")
    vis_files, problems = _images_by_stem(vis_folder)
    nir_files, nir_problems = _images_by_stem(nir_folder)
    problems += nir_problems
    if not vis_files and not nir_files:
        raise DataError(
            f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in {vis_folder} or {nir_folder}"
        )
    problems += _unmatched_problems(vis_files, nir_files, vis_folder, nir_folder)
    jobs = [
        (lambda stem=stem: read_pair(vis_files[stem], nir_files[stem], name=stem))
        for stem in sorted(vis_files.keys() & nir_files.keys())
    ]
    return _read_all(jobs, problems, skip_bad, root)


def read_nirscene(root: str | Path, skip_bad: bool = False) -> list[Pair]:
    """Reads the RGB-NIR Scene layout: ``root/<category>/NNNN_rgb.tiff`` + ``NNNN_nir.tiff``.

    Pairs are named ``"<category>/NNNN"`` and come sorted by name. Files in the
    category folders whose stem does not end in ``_rgb`` or ``_nir`` are ignored.
    Errors as in :func:`read_pair_folder`.
    """
    vis_files, nir_files, problems = _nirscene_files(root)
    jobs = [
        (lambda name=name: read_pair(vis_files[name], nir_files[name], name=name))
        for name in sorted(vis_files.keys() & nir_files.keys())
    ]
    return _read_all(jobs, problems, skip_bad, Path(root))


def read_known_affine(root: str | Path, skip_bad: bool = False) -> list[Pair]:
    """Reads the known-affine layout: :func:`read_nirscene`'s pairs, each with its matrix.

    ``root/<category>/NNNN_rgb.*`` is the moving VIS, ``NNNN_nir.*`` the fixed NIR
    (possibly stored as 3 identical channels) and ``NNNN_nir.npy`` the ``(2, 3)``
    matrix ``M`` (:func:`read_known_affine_matrix`) that laid the VIS onto the NIR,
    kept in :attr:`Pair.known_affine`. Other files are ignored. Errors as in
    :func:`read_pair_folder`, and a missing or bad ``.npy`` file.
    """
    vis_files, nir_files, problems = _nirscene_files(root)

    def read(name: str) -> Pair:
        pair = read_pair(vis_files[name], nir_files[name], name=name)
        pair.known_affine = read_known_affine_matrix(
            nir_files[name].with_suffix(KNOWN_AFFINE_SUFFIX)
        )
        return pair

    jobs = [(lambda name=name: read(name)) for name in sorted(vis_files.keys() & nir_files.keys())]
    return _read_all(jobs, problems, skip_bad, Path(root))


def read_known_affine_matrix(path: str | Path) -> np.ndarray:
    """Reads a known-affine ``.npy`` file: a real ``(2, 3)`` matrix, finite, invertible.

    Returns:
      ``(2, 3)`` float64 ``M`` on ``[x, y, 1]`` pixels (see :attr:`Pair.known_affine`).

    Raises:
      DataError: the file is missing or not a numpy array file, or the matrix has
        another shape, is not real numbers, holds NaN / Inf, or its 2x2 part has a
        determinant below :data:`MIN_AFFINE_DETERMINANT` in magnitude (singular).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (each NIR image needs its affine matrix)")
    try:
        matrix = np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises several types for a file it cannot parse.
        raise DataError(
            f"{path}: cannot be read as a numpy .npy array: {type(error).__name__}: {error}"
        ) from error
    matrix = _finite_numbers(matrix, matrix.shape == (2, 3), path, "the array", "a 2x3 matrix")
    determinant = float(np.linalg.det(matrix[:, :2]))
    if abs(determinant) < MIN_AFFINE_DETERMINANT:
        raise DataError(
            f"{path}: the affine matrix is singular (determinant of its 2x2 part "
            f"{determinant:.3g}): {matrix.tolist()}"
        )
    return matrix


def _nirscene_files(root: str | Path) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """The RGB-NIR Scene layout's VIS and NIR files keyed by pair name, and the problems
    found (a name with two files of one kind, names without a partner)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    vis_files: dict[str, Path] = {}
    nir_files: dict[str, Path] = {}
    problems: list[str] = []
    for category in sorted(path for path in root.iterdir() if path.is_dir()):
        for path in sorted(category.iterdir()):
            suffix_kind = _nirscene_kind(path)
            if suffix_kind is None:
                continue
            name = f"{category.name}/{path.stem[:-4]}"
            files = vis_files if suffix_kind == "vis" else nir_files
            if name in files:
                problems.append(
                    f"{path}: pair {name!r} has two {suffix_kind.upper()} files "
                    f"({files[name].name}, {path.name})"
                )
                continue
            files[name] = path
    if not vis_files and not nir_files:
        raise DataError(f"{root}: no category folder holds NNNN_rgb / NNNN_nir image files")
    problems += _unmatched_problems(vis_files, nir_files, root, root)
    return vis_files, nir_files, problems


def read_landmark_mat(path: str | Path) -> Pair:
    """Reads a MATLAB landmark file (``-v7`` or older) into a :class:`Pair` with landmarks.

    The file holds ``I_move`` (``(H, W, 3)`` or ``(H, W)``, the VIS), ``I_fix``
    (``(H, W)``, the NIR), ``LMmove`` and ``LMfix`` (``N x 2``, columns ``[x, y]``,
    MATLAB's 1-based pixel coordinates, sub-pixel). The landmarks are converted to
    zero-based ``(y, x)``: ``(y, x) = (LM[:, 1] - 1, LM[:, 0] - 1)``. ``vis_points``
    come from ``LMmove``, ``nir_points`` from ``LMfix``.

    Raises:
      DataError: missing file or keys (all missing keys are named), unreadable file,
        bad images (as :func:`read_image`) or bad landmark arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError as error:
        raise DataError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with -v7"
        ) from error
    except Exception as error:  # scipy raises many types for a file it cannot parse.
        raise DataError(
            f"{path}: cannot be read as a MATLAB .mat file: {type(error).__name__}: {error}"
        ) from error
    missing = [key for key in LANDMARK_KEYS if key not in contents]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {', '.join(missing)} "
            f"(a landmark file holds {', '.join(LANDMARK_KEYS)})"
        )
    vis = _to_kind_channels(
        _to_unit_float(_with_channel_axis(contents["I_move"], path, "I_move"), path), "vis", path
    )
    nir = _to_kind_channels(
        _to_unit_float(_with_channel_axis(contents["I_fix"], path, "I_fix"), path), "nir", path
    )
    if vis.shape[:2] != nir.shape[:2]:
        raise DataError(
            f"{path}: sizes differ: I_move is {vis.shape[0]}x{vis.shape[1]}, I_fix is "
            f"{nir.shape[0]}x{nir.shape[1]} (height x width)"
        )
    vis_points = _matlab_landmarks(contents["LMmove"], path, "LMmove")
    nir_points = _matlab_landmarks(contents["LMfix"], path, "LMfix")
    if len(vis_points) != len(nir_points):
        raise DataError(
            f"{path}: LMmove has {len(vis_points)} landmarks but LMfix has {len(nir_points)}"
        )
    outside = {
        key: _count_outside(points, vis.shape[:2])
        for key, points in (("LMmove", vis_points), ("LMfix", nir_points))
    }
    if any(outside.values()):
        logging.warning(
            "%s: landmarks outside the %dx%d image (more than half a pixel past the edge): "
            "%s; are the columns [x, y], 1-based?",
            path,
            vis.shape[0],
            vis.shape[1],
            ", ".join(f"{count} of {len(vis_points)} in {key}" for key, count in outside.items()),
        )
    return Pair(
        name=path.stem,
        vis=vis,
        nir=nir,
        vis_path=path,
        nir_path=path,
        vis_points=vis_points,
        nir_points=nir_points,
    )


def read_landmark_folder(root: str | Path, skip_bad: bool = False) -> list[Pair]:
    """Reads every ``*.mat`` file in ``root`` with :func:`read_landmark_mat`, sorted by name.

    Errors as in :func:`read_pair_folder` (an empty folder raises).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    files = sorted(
        path for path in root.iterdir() if path.suffix.lower() == ".mat" and path.is_file()
    )
    if not files:
        raise DataError(f"{root}: no .mat landmark files")
    jobs = [(lambda path=path: read_landmark_mat(path)) for path in files]
    return _read_all(jobs, [], skip_bad, root)


# Each layout's reader, called as ``reader(root, vis_dir, nir_dir, skip_bad)``; a new
# layout adds its reader here and its recognition to :func:`detect_layout`. The scripts'
# ``--layout`` flags take their choices from :data:`LAYOUTS`.
_READERS: dict[str, Callable[[Path, str, str, bool], list[Pair]]] = {
    "pairs": read_pair_folder,
    "nirscene": lambda root, vis_dir, nir_dir, skip_bad: read_nirscene(root, skip_bad),
    "known_affine": lambda root, vis_dir, nir_dir, skip_bad: read_known_affine(root, skip_bad),
    "landmarks": lambda root, vis_dir, nir_dir, skip_bad: read_landmark_folder(root, skip_bad),
}
# "auto" detects the layout (:func:`detect_layout`).
LAYOUTS = ("auto", *_READERS)


def detect_layout(root: str | Path, vis_dir: str = "vis", nir_dir: str = "nir") -> str:
    """The layout of ``root``: ``"pairs"``, ``"landmarks"``, ``"known_affine"`` or
    ``"nirscene"``.

    Checked in that order: ``root/vis_dir`` and ``root/nir_dir`` both exist; ``root``
    holds ``.mat`` files; a sub-folder of ``root`` holds ``*_nir.npy`` matrices; a
    sub-folder holds ``*_rgb`` / ``*_nir`` images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    if (root / vis_dir).is_dir() and (root / nir_dir).is_dir():
        return "pairs"
    if any(path.suffix.lower() == ".mat" for path in root.iterdir()):
        return "landmarks"
    categories = [path for path in root.iterdir() if path.is_dir()]
    if any(_is_known_affine_matrix(path) for folder in categories for path in folder.iterdir()):
        return "known_affine"
    for category in categories:
        if any(_nirscene_kind(path) is not None for path in category.iterdir()):
            return "nirscene"
    raise DataError(
        f"{root}: unknown data layout: expected folders {vis_dir}/ and {nir_dir}/ (pass nir_dir= "
        "if the NIR folder has another name, e.g. 'ir' for RoadScene), .mat landmark files, "
        "or category folders holding NNNN_rgb / NNNN_nir images (and NNNN_nir.npy affines)"
    )


def read_dataset(
    root: str | Path,
    layout: str = "auto",
    vis_dir: str = "vis",
    nir_dir: str = "nir",
    skip_bad: bool = False,
) -> list[Pair]:
    """Reads every pair under ``root``: the one entry point for all layouts.

    Args:
      root: the data folder.
      layout: ``"pairs"``, ``"nirscene"``, ``"known_affine"``, ``"landmarks"`` or
        ``"auto"`` (see :func:`detect_layout`).
      vis_dir, nir_dir: folder names of the ``"pairs"`` layout.
      skip_bad: skip (and log) bad pairs instead of raising.

    Returns:
      The pairs, sorted by name.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        layout = detect_layout(root, vis_dir, nir_dir)
    return _READERS[layout](root, vis_dir, nir_dir, skip_bad)


def _decode_tiff(path: Path) -> np.ndarray:
    """``(H, W, C)`` samples of a single-image TIFF, in the file's own dtype."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array = series.asarray()
        axes = series.axes
    # Length-1 axes other than the image's own (e.g. a one-page "Q" axis) carry nothing.
    for index in reversed(range(len(axes))):
        if axes[index] not in "YXS" and array.shape[index] == 1:
            array = np.squeeze(array, axis=index)
            axes = axes[:index] + axes[index + 1 :]
    if axes == "YX":
        return array[..., None]
    if axes == "YXS":
        return array
    if axes == "SYX":
        return np.moveaxis(array, 0, -1)
    raise DataError(
        f"{path}: TIFF holds an array of shape {array.shape} with axes {axes!r}; expected one "
        "image (height, width and optional channels), not a stack of pages"
    )


def _decode_with_pillow(path: Path) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` samples of a PNG / JPEG / BMP file."""
    with Image.open(path) as image:
        if image.format == "PNG" and image.tile and image.tile[0][3] in _PILLOW_LOSSY_PNG_RAWMODES:
            return _decode_deep_colour_png(path)
        image.load()
        if image.mode in ("P", "PA"):
            has_alpha = image.mode == "PA" or "transparency" in image.info
            image = image.convert("RGBA" if has_alpha else "RGB")
        elif image.mode in _PILLOW_CONVERSIONS:
            image = image.convert(_PILLOW_CONVERSIONS[image.mode])
        return np.asarray(image)


def _decode_deep_colour_png(path: Path) -> np.ndarray:
    """A 16-bit colour PNG at full depth, channels in RGB(A) order."""
    array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DataError(f"{path}: cannot be decoded as a 16-bit PNG (unreadable or truncated)")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        # OpenCV orders colour channels BGR(A).
        array = array[..., [2, 1, 0, *range(3, array.shape[-1])]]
    return array


def _with_channel_axis(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        return array[..., None]
    if array.ndim == 3:
        return array
    raise DataError(f"{path}: {key} has shape {array.shape}; expected (H, W) or (H, W, C)")


def _to_unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    """``(H, W)`` / ``(H, W, C)`` samples -> ``(H, W, C)`` ``float32`` in ``[0, 1]``."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(
            f"{path}: image of shape {array.shape}; expected a non-empty (H, W[, C]) image"
        )
    if array.dtype.kind == "u" and array.dtype.itemsize == 1:
        return array.astype(np.float32) / np.float32(255.0)
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:  # either byte order
        return array.astype(np.float32) / np.float32(65535.0)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            num_nan = int(np.isnan(array).sum())
            num_inf = int(array.size - finite.sum()) - num_nan
            raise DataError(f"{path}: float image holds {num_nan} NaN and {num_inf} Inf sample(s)")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise DataError(
                f"{path}: float image with values in [{low:g}, {high:g}]; "
                "float images must lie in [0, 1]"
            )
        return array.astype(np.float32)
    raise DataError(
        f"{path}: unsupported sample type {array.dtype}; expected 8- or 16-bit unsigned "
        "integers or floats in [0, 1]"
    )


def _is_colourless(image: np.ndarray) -> bool:
    """One channel, or colour channels (alpha aside) that differ by at most
    :data:`_GREY_TOLERANCE` (JPEG's round-off of a grey image)."""
    colour_channels = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
    spread = colour_channels.max(axis=-1) - colour_channels.min(axis=-1)
    return float(spread.max()) <= _GREY_TOLERANCE


def _to_kind_channels(image: np.ndarray, kind: str, path: Path) -> np.ndarray:
    """Checks and fixes the channel count of an ``(H, W, C)`` image of the given kind."""
    channels = image.shape[-1]
    if kind == "vis":
        if channels in (1, 3):
            return image
        if channels in (2, 4):  # grey + alpha, RGB + alpha: the alpha is dropped.
            return np.ascontiguousarray(image[..., : channels - 1])
        raise DataError(
            f"{path}: VIS image with {channels} channels; expected 1 (grey) or 3 (RGB), "
            "optionally followed by alpha"
        )
    if channels == 1:
        return image
    if channels == 3 and (image == image[..., :1]).all():
        # A grey image stored as RGB (as the known-affine benchmark stores its NIR).
        return np.ascontiguousarray(image[..., :1])
    if channels == 3:
        logging.warning("%s: the NIR image has 3 channels; using its BT.601 luma", path)
        return colour.luma(image).numpy().astype(np.float32)
    raise DataError(
        f"{path}: NIR image with {channels} channels; expected 1 (grey) or 3 (reduced to luma)"
    )


def _matlab_landmarks(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """MATLAB ``N x 2`` 1-based ``[x, y]`` -> ``(N, 2)`` zero-based ``(y, x)`` float64."""
    array = np.asarray(array)
    shape_ok = array.ndim == 2 and array.shape[1] == 2
    points = _finite_numbers(array, shape_ok, path, key, "N x 2 numbers [x, y]")
    if not len(points):
        raise DataError(f"{path}: {key} holds no landmarks (0 rows); expected N x 2 with N >= 1")
    return points[:, ::-1] - 1.0


def _finite_numbers(
    array: np.ndarray, shape_ok: bool, path: Path, what: str, expected: str
) -> np.ndarray:
    """``array`` as float64 once checked: of the expected shape (``shape_ok``), numbers,
    all finite; else a DataError naming the file, ``what`` and ``expected``."""
    if not shape_ok or not np.issubdtype(array.dtype, np.number):
        raise DataError(
            f"{path}: {what} has shape {array.shape} and type {array.dtype}; expected {expected}"
        )
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{path}: {what} holds NaN or Inf")
    return values


def _count_outside(points: np.ndarray, shape: tuple[int, int]) -> int:
    """How many ``(y, x)`` points lie more than half a pixel outside an image of ``shape``."""
    limits = np.array(shape, np.float64) - 0.5
    return int(np.sum(np.any((points < -0.5) | (points > limits), axis=1)))


def _images_by_stem(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Image files of ``folder`` keyed by stem, and a problem per stem used twice.

    Entries that are not image files are skipped; folders and broken links among them
    (which look like pairs put in the wrong place) are logged in one warning with their
    count and names. Other files (notes, thumbnails) are skipped silently.
    """
    files: dict[str, Path] = {}
    problems = []
    skipped = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            skipped.append(f"{path.name}/ (a folder)")
            continue
        if not path.exists():
            skipped.append(f"{path.name} (a broken link)")
            continue
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            problems.append(
                f"{path}: stem {path.stem!r} is used by two files "
                f"({files[path.stem].name}, {path.name})"
            )
            continue
        files[path.stem] = path
    if skipped:
        logging.warning(
            "%s: skipped %d entry(ies) that are not image files: %s (pairs in sub-folders "
            "are not read)",
            folder,
            len(skipped),
            ", ".join(skipped),
        )
    return files, problems


def _is_known_affine_matrix(path: Path) -> bool:
    """Whether ``path`` is named as a known-affine matrix, ``NNNN_nir.npy``."""
    return path.suffix.lower() == KNOWN_AFFINE_SUFFIX and path.stem[-4:].lower() == "_nir"


def _nirscene_kind(path: Path) -> str | None:
    """``"vis"`` / ``"nir"`` for an RGB-NIR Scene image file, else ``None``."""
    if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return NIRSCENE_SUFFIXES.get(path.stem[-4:].lower())


def _unmatched_problems(
    vis_files: dict[str, Path], nir_files: dict[str, Path], vis_folder: Path, nir_folder: Path
) -> list[str]:
    """One problem per modality listing the names that have no partner."""
    problems = []
    for names, folder, other_folder, other in (
        (sorted(vis_files.keys() - nir_files.keys()), vis_folder, nir_folder, "NIR"),
        (sorted(nir_files.keys() - vis_files.keys()), nir_folder, vis_folder, "VIS"),
    ):
        if names:
            problems.append(
                f"{folder}: {len(names)} name(s) without a {other} partner in {other_folder}: "
                f"{', '.join(names)}"
            )
    return problems


def _read_all(
    jobs: list[Callable[[], Pair]], problems: list[str], skip_bad: bool, source: Path
) -> list[Pair]:
    """Runs every reader once, collecting all problems before deciding to raise."""
    pairs = []
    for job in jobs:
        try:
            pairs.append(job())
        except DataError as error:
            problems.extend(error.problems)
    if problems and not skip_bad:
        raise DataError.from_problems(
            f"{source}: bad input data (pass skip_bad=True to skip it)", problems
        )
    if problems:
        logging.warning(
            "%s: skipped bad input:\n%s", source, "\n".join(f"  - {p}" for p in problems)
        )
    if not pairs:
        raise DataError(f"{source}: no readable pairs")
    return pairs
