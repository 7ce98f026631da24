"""What is evaluated: the pairs, their ground truth and a description of where they came from.

The sources (``evaluate.py`` picks exactly one):

* one real pair (:func:`single_pair`) or a folder of them taken as they are
  (:func:`unaligned_folder`, ``--misalign=none``): real, unknown misalignment; only the
  image-level registration metrics (PSNR, SSIM) apply;
* a folder of ``.mat`` landmark files (:func:`landmark_folder`): real misalignment,
  landmark errors from the files;
* a folder of the known-affine layout (:func:`known_affine_folder`): real pairs whose
  NIR was warped by a stored affine, the exact ground truth; landmark errors over a
  grid and the end-point error;
* a folder of aligned pairs (:func:`synthetic_folder`) or the built-in demo set
  (:func:`demo_set`, a *simulated* NIR): misaligned here by a seeded synthetic
  transform whose exact ground truth gives landmark errors and the end-point error.

Everything is read (and misaligned) up front, so bad input fails before any inference.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from rfnet_tf.data import (
    DataError,
    MisalignedPair,
    Pair,
    demo_misaligned,
    detect_layout,
    read_dataset,
    read_landmark_folder,
    read_pair,
)
from rfnet_tf.data.demo import DEMO_IMAGES
from rfnet_tf.data.io import KNOWN_AFFINE_SUFFIX, LAYOUTS
from rfnet_tf.data.splits import select_pairs
from rfnet_tf.data.synthetic import (
    MISALIGNMENT_KINDS,
    AffineRanges,
    LocalFieldRanges,
    invert_affine,
    seeded_misalignment,
)
from rfnet_tf.metrics.registration import (
    grid_points,
    inside_image,
    map_fixed_to_moving,
    pixel_matrix_to_affine,
    sampling_coordinates,
)
from rfnet_tf.networks.f2m import MIN_IMAGE_SIZE

# --data_dir reads every layout but the landmark files' (read by --landmarks_dir).
FOLDER_LAYOUTS = tuple(layout for layout in LAYOUTS if layout != "landmarks")
# What --data_dir's pairs get: a synthetic misalignment, or none ("none": taken as they are).
FOLDER_MISALIGNMENTS = (*MISALIGNMENT_KINDS, "none")
# The known-affine metric's grid: this many fixed points a side, corner to corner.
GRID_POINTS_PER_SIDE = 9
# Landmark errors are measured in the fixed frame (moving landmarks carried there by the
# registration's inverse: the paper's reading) or in the moving one (fixed landmarks
# carried by the registration's backward map: the known-affine benchmark's reading).
LANDMARK_FRAMES = ("fixed", "moving")


@dataclasses.dataclass(eq=False)
class KnownAffine:
    """The true registration of a pair of the known-affine layout.

    Attributes:
      forward: ``(2, 3)`` float64 ``M`` as stored (:attr:`Pair.known_affine`): OpenCV's
        forward pixel convention on ``[x, y, 1]``, VIS (moving) to NIR (fixed).
      theta: ``(2, 3)`` float64 normalised backward affine of the true registration,
        ``registered[q] = moving[M^-1 q]`` (the project's convention).
      shape: ``(H, W)`` of both images.
    """

    forward: np.ndarray
    theta: np.ndarray
    shape: tuple[int, int]

    @property
    def mask(self) -> np.ndarray:
        """``(H, W, 1)`` ones: the moving VIS is an unwarped photograph, content everywhere."""
        return np.ones((*self.shape, 1), np.float32)

    def registration_coordinates(self) -> np.ndarray:
        """``(H, W, 2)`` float64 ``(y, x)`` moving pixel ``M^-1 q`` of every fixed pixel ``q``."""
        return sampling_coordinates(self.shape, theta=self.theta)


@dataclasses.dataclass(eq=False)
class Sample:
    """One pair to evaluate.

    Attributes:
      pair: ``vis`` is the moving VIS, ``nir`` the fixed NIR; landmarks (``(N, 2)``
        ``(y, x)`` zero-based px) when the source has them.
      truth: the exact registration, a synthetic misalignment with its inverse or a
        known affine (both give ``registration_coordinates()`` and the moving content
        ``mask``); ``None`` when it is unknown.
      landmark_frame: where landmark errors are measured (:data:`LANDMARK_FRAMES`):
        ``"fixed"``, ``|T^-1(moving landmark) - fixed landmark|`` in fixed px;
        ``"moving"``, ``|T(fixed landmark) - moving landmark|`` in moving px.
    """

    pair: Pair
    truth: MisalignedPair | KnownAffine | None = None
    landmark_frame: str = "fixed"

    def __post_init__(self):
        if self.landmark_frame not in LANDMARK_FRAMES:
            raise ValueError(
                f"landmark_frame must be one of {LANDMARK_FRAMES}, got {self.landmark_frame!r}"
            )

    @property
    def name(self) -> str:
        return self.pair.name

    @property
    def category(self) -> str | None:
        """An RGB-NIR Scene pair's category (``"field"`` of ``"field/0001"``), else ``None``."""
        return self.name.split("/", 1)[0] if "/" in self.name else None

    @property
    def moving_mask(self) -> np.ndarray | None:
        """``(H, W)`` bool, where the moving VIS shows image content; ``None``: everywhere."""
        return None if self.truth is None else self.truth.mask[..., 0] > 0.5


@dataclasses.dataclass(eq=False)
class EvaluationSet:
    """The samples and what they are.

    Attributes:
      samples: the pairs, in evaluation order.
      source: ``"pair"``, ``"landmarks"``, ``"data_dir"``, ``"known_affine"`` or ``"demo"``.
      title: names the data for people (results.md title, terminal).
      simulated: True when the NIR images are simulated (the demo set).
      misalignment: the synthetic misalignment kind, or ``None`` for real misalignment.
      details: the source's settings for results.json (paths, seed, layout, ...).
    """

    samples: list[Sample]
    source: str
    title: str
    simulated: bool
    misalignment: str | None
    details: dict

    def __post_init__(self):
        """Refuses pairs smaller than the networks accept (``MIN_IMAGE_SIZE`` a side)."""
        problems = [
            f"{sample.pair.vis_path or sample.name}: {sample.pair.height}x{sample.pair.width} "
            f"px (height x width); RFNet needs at least {MIN_IMAGE_SIZE} px a side"
            for sample in self.samples
            if min(sample.pair.height, sample.pair.width) < MIN_IMAGE_SIZE
        ]
        if problems:
            raise DataError("; ".join(problems))

    @property
    def has_landmarks(self) -> bool:
        return all(sample.pair.has_landmarks for sample in self.samples)

    @property
    def has_ground_truth(self) -> bool:
        return all(sample.truth is not None for sample in self.samples)

    @property
    def categories(self) -> list[str]:
        """The pairs' categories in order of appearance; empty unless every pair has one."""
        names = [sample.category for sample in self.samples]
        return [] if None in names else list(dict.fromkeys(names))


def single_pair(vis_path: str | Path, nir_path: str | Path) -> EvaluationSet:
    """One real pair: its misalignment is unknown (no landmarks, no ground truth)."""
    pair = read_pair(vis_path, nir_path)
    return EvaluationSet(
        samples=[Sample(pair)],
        source="pair",
        title=f"pair {pair.name} (real data, misalignment unknown)",
        simulated=False,
        misalignment=None,
        details={"vis": str(vis_path), "nir": str(nir_path)},
    )


def landmark_folder(root: str | Path, skip_bad: bool = False) -> EvaluationSet:
    """Every ``.mat`` landmark file in ``root``: real misalignment, landmarks from the files."""
    pairs = read_landmark_folder(root, skip_bad)
    return EvaluationSet(
        samples=[Sample(pair) for pair in pairs],
        source="landmarks",
        title=f"{Path(root).resolve().name}: {len(pairs)} landmark pair(s) (real misalignment)",
        simulated=False,
        misalignment=None,
        details={"landmarks_dir": str(root), "skip_bad": skip_bad},
    )


def misalign(
    pair: Pair,
    kind: str,
    seed: int,
    num_landmarks: int,
    affine_ranges: AffineRanges = AffineRanges(),
    field_ranges: LocalFieldRanges = LocalFieldRanges(),
) -> Sample:
    """A sample made from an aligned pair by a seeded synthetic misalignment.

    Raises:
      DataError: the image is too small to hold the landmarks (names the file).
    """
    try:
        truth = seeded_misalignment(pair, seed, kind, num_landmarks, affine_ranges, field_ranges)
    except ValueError as error:
        where = pair.vis_path or pair.name
        raise DataError(f"{where}: cannot be misaligned synthetically: {error}") from error
    return Sample(truth.pair, truth)


@dataclasses.dataclass(frozen=True)
class Folder:
    """A ``--data_dir`` folder and how to read it.

    Attributes:
      root: the folder.
      layout: one of :data:`FOLDER_LAYOUTS` (``"auto"`` detects it).
      vis_dir, nir_dir: the sub-folders of the ``"pairs"`` layout.
      skip_bad: skip (and log) bad pairs instead of raising.
      exclude: pair names left out; ``only``: the pair names read (all if empty). Split
        names (``rfnet_tf.data.splits``) stand for their pairs.
    """

    root: str | Path
    layout: str = "auto"
    vis_dir: str = "vis"
    nir_dir: str = "nir"
    skip_bad: bool = False
    exclude: tuple[str, ...] = ()
    only: tuple[str, ...] = ()

    def resolved_layout(self) -> str:
        """``layout``, or for ``"auto"`` the one detected (``rfnet_tf.data.detect_layout``).

        Raises:
          DataError: a folder of ``.mat`` landmark files (evaluate them as landmark
            files) or of no known layout.
        """
        if self.layout not in FOLDER_LAYOUTS:
            raise ValueError(f"layout must be one of {FOLDER_LAYOUTS}, got {self.layout!r}")
        if self.layout != "auto":
            return self.layout
        layout = detect_layout(self.root, self.vis_dir, self.nir_dir)
        if layout == "landmarks":
            raise DataError(
                f"{self.root}: holds .mat landmark files, which are already misaligned: "
                "evaluate them with --landmarks_dir"
            )
        return layout

    def read(self, layout: str) -> tuple[list[Pair], dict]:
        """The selected pairs in ``layout`` (``rfnet_tf.data.splits.select_pairs``), and
        how they were read (for results.json)."""
        pairs = read_dataset(self.root, layout, self.vis_dir, self.nir_dir, self.skip_bad)
        pairs = select_pairs(pairs, self.only, self.exclude, where=str(self.root))
        details = {
            "data_dir": str(self.root),
            "layout": layout,
            "vis_dir": self.vis_dir,
            "nir_dir": self.nir_dir,
            "skip_bad": self.skip_bad,
            "pairs": list(self.only),
            "exclude": list(self.exclude),
        }
        return pairs, details


def synthetic_folder(
    folder: Folder,
    kind: str = "both",
    seed: int = 0,
    num_landmarks: int = 5,
    affine_ranges: AffineRanges = AffineRanges(),
    field_ranges: LocalFieldRanges = LocalFieldRanges(),
) -> EvaluationSet:
    """A folder of aligned pairs (``"pairs"`` or ``"nirscene"`` layout), each misaligned
    by a seeded synthetic transform of ``kind`` (``"affine"``, ``"local"``, ``"both"``).
    ``folder.exclude`` serves pairs known not to be aligned, whose own misalignment would
    corrupt the synthetic ground truth.

    Raises:
      DataError: bad input, a name the folder does not hold, or a folder of ``.mat``
        landmark files or of the known-affine layout (those are already misaligned:
        evaluate them as they are).
    """
    if kind not in MISALIGNMENT_KINDS:
        raise ValueError(f"kind must be one of {MISALIGNMENT_KINDS}, got {kind!r}")
    layout = folder.resolved_layout()
    if layout == "known_affine":
        raise DataError(
            f"{folder.root}: holds pairs with known affines (NNNN_nir.npy), which are already "
            "misaligned: evaluate them without --misalign"
        )
    pairs, details = folder.read(layout)
    samples = [
        misalign(pair, kind, seed, num_landmarks, affine_ranges, field_ranges) for pair in pairs
    ]
    return EvaluationSet(
        samples=samples,
        source="data_dir",
        title=(
            f"{Path(folder.root).resolve().name}: {len(samples)} real pair(s) under a "
            f"synthetic {kind} misalignment (seed {seed})"
        ),
        simulated=False,
        misalignment=kind,
        details={
            **details,
            "seed": seed,
            "num_landmarks": num_landmarks,
            **misalignment_details(kind, affine_ranges, field_ranges),
        },
    )


def unaligned_folder(folder: Folder) -> EvaluationSet:
    """A folder of real pairs taken as they are (``--misalign=none``): nothing is added
    and the misalignment is unknown, so only PSNR and SSIM apply; for registering and
    fusing a data set rather than scoring it. Layouts and errors as
    :func:`synthetic_folder`."""
    pairs, details = folder.read(folder.resolved_layout())
    return EvaluationSet(
        samples=[Sample(pair) for pair in pairs],
        source="data_dir",
        title=(
            f"{Path(folder.root).resolve().name}: {len(pairs)} real pair(s) as they are "
            "(misalignment unknown)"
        ),
        simulated=False,
        misalignment=None,
        details=details,
    )


def known_affine_sample(pair: Pair) -> Sample:
    """A pair of the known-affine layout with its true registration and grid landmarks.

    The fixed landmarks are the points ``q`` of a :data:`GRID_POINTS_PER_SIDE`-square
    grid spanning the NIR corner to corner (``metrics.registration.grid_points``) whose
    true source ``M^-1 q`` lies inside the VIS image; the moving landmarks are those
    sources. Errors are measured in the moving frame (``landmark_frame="moving"``):
    ``|T(q) - M^-1 q|`` for a registration's backward map ``T``.

    Raises:
      DataError: the matrix takes no grid point from inside the VIS image.
    """
    shape = (pair.height, pair.width)
    backward_pixels = np.asarray(invert_affine(pair.known_affine))
    theta = pixel_matrix_to_affine(backward_pixels, shape)
    fixed = grid_points(shape, GRID_POINTS_PER_SIDE)
    moving = map_fixed_to_moving(fixed, shape, theta=theta)
    kept = inside_image(moving, shape)
    if not kept.any():
        raise DataError(
            f"{pair.nir_path.with_suffix(KNOWN_AFFINE_SUFFIX)}: the matrix takes none of the "
            f"NIR's {len(fixed)} grid points from inside the VIS image (is it this pair's?)"
        )
    pair.nir_points = fixed[kept]
    pair.vis_points = moving[kept]
    return Sample(pair, KnownAffine(pair.known_affine, theta, shape), landmark_frame="moving")


def known_affine_folder(folder: Folder) -> EvaluationSet:
    """A folder of the known-affine layout (``rfnet_tf.data.read_known_affine``): real
    pairs whose NIR was warped by a stored affine, evaluated as they are against it
    (:func:`known_affine_sample`). Errors as :func:`synthetic_folder`."""
    pairs, details = folder.read("known_affine")
    samples = [known_affine_sample(pair) for pair in pairs]
    return EvaluationSet(
        samples=samples,
        source="known_affine",
        title=(
            f"{Path(folder.root).resolve().name}: {len(samples)} real pair(s) with known affines "
            "(real misalignment, exact ground truth)"
        ),
        simulated=False,
        misalignment=None,
        details={**details, "grid_points_per_side": GRID_POINTS_PER_SIDE},
    )


def misalignment_details(
    kind: str, affine_ranges: AffineRanges, field_ranges: LocalFieldRanges
) -> dict:
    """The ranges of a synthetic misalignment of ``kind``, for results.json."""
    details = {}
    if kind in ("affine", "both"):
        details["affine_ranges"] = dataclasses.asdict(affine_ranges)
    if kind in ("local", "both"):
        details["local_field_ranges"] = dataclasses.asdict(field_ranges)
    return details


def demo_set(
    kind: str = "both",
    seed: int = 0,
    num_landmarks: int = 5,
    names: tuple[str, ...] = DEMO_IMAGES,
    affine_ranges: AffineRanges = AffineRanges(),
    field_ranges: LocalFieldRanges = LocalFieldRanges(),
) -> EvaluationSet:
    """The built-in demo set: scikit-image photographs and a *simulated* NIR, misaligned
    by a seeded synthetic transform (``rfnet_tf.data.demo_misaligned``)."""
    truths = demo_misaligned(seed, kind, num_landmarks, names, affine_ranges, field_ranges)
    return EvaluationSet(
        samples=[Sample(truth.pair, truth) for truth in truths],
        source="demo",
        title=(
            f"SIMULATED demo set: {len(truths)} scikit-image photograph(s) with a simulated NIR "
            f"(not real NIR data) under a synthetic {kind} misalignment (seed {seed})"
        ),
        simulated=True,
        misalignment=kind,
        details={
            "images": list(names),
            "seed": seed,
            "num_landmarks": num_landmarks,
            **misalignment_details(kind, affine_ranges, field_ranges),
            "note": "simulated NIR (rfnet_tf.data.simulate_nir), not real multi-modal data",
        },
    )
