"""What is evaluated: the pairs, their ground truth and a description of where they came from.

Four sources (``evaluate.py`` picks exactly one):

* one real pair (:func:`single_pair`): real, unknown misalignment; only the image-level
  registration metrics (PSNR, SSIM) apply;
* a folder of ``.mat`` landmark files (:func:`landmark_folder`): real misalignment,
  landmark errors from the files;
* a folder of aligned pairs (:func:`synthetic_folder`) or the built-in demo set
  (:func:`demo_set`, a *simulated* NIR): misaligned here by a seeded synthetic
  transform whose exact ground truth gives landmark errors and the end-point error.

Everything is read (and misaligned) up front, so bad input fails before any inference.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import numpy as np

from rfnet_tf.data import (
    DataError,
    MisalignedPair,
    Pair,
    demo_misaligned,
    detect_layout,
    make_misaligned_pair,
    read_dataset,
    read_landmark_folder,
    read_pair,
)
from rfnet_tf.data.demo import DEMO_IMAGES
from rfnet_tf.data.splits import select_pairs
from rfnet_tf.data.synthetic import MISALIGNMENT_KINDS, AffineRanges, LocalFieldRanges
from rfnet_tf.networks.f2m import MIN_IMAGE_SIZE

FOLDER_LAYOUTS = ("auto", "pairs", "nirscene")
# The generator of a folder pair's misalignment is keyed on (seed, crc32(name), this).
_MISALIGNMENT_STREAM = 1


@dataclasses.dataclass(eq=False)
class Sample:
    """One pair to evaluate.

    Attributes:
      pair: ``vis`` is the moving VIS, ``nir`` the fixed NIR; landmarks (``(N, 2)``
        ``(y, x)`` zero-based px) when the source has them.
      truth: the synthetic misalignment and its exact inverse, or ``None`` for real data.
    """

    pair: Pair
    truth: MisalignedPair | None = None

    @property
    def name(self) -> str:
        return self.pair.name

    @property
    def moving_mask(self) -> np.ndarray | None:
        """``(H, W)`` bool, where the moving VIS shows image content; ``None``: everywhere."""
        return None if self.truth is None else self.truth.mask[..., 0] > 0.5


@dataclasses.dataclass(eq=False)
class EvaluationSet:
    """The samples and what they are.

    Attributes:
      samples: the pairs, in evaluation order.
      source: ``"pair"``, ``"landmarks"``, ``"data_dir"`` or ``"demo"``.
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


def misalignment_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of one pair's synthetic misalignment: keyed on the seed and the
    pair's name only, so a pair's misalignment does not depend on the other pairs."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), _MISALIGNMENT_STREAM])


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
        truth = make_misaligned_pair(
            pair,
            misalignment_rng(seed, pair.name),
            kind,
            num_landmarks,
            affine_ranges,
            field_ranges,
        )
    except ValueError as error:
        where = pair.vis_path or pair.name
        raise DataError(f"{where}: cannot be misaligned synthetically: {error}") from error
    return Sample(truth.pair, truth)


def synthetic_folder(
    root: str | Path,
    kind: str = "both",
    seed: int = 0,
    num_landmarks: int = 5,
    layout: str = "auto",
    vis_dir: str = "vis",
    nir_dir: str = "nir",
    skip_bad: bool = False,
    exclude: tuple[str, ...] = (),
    only: tuple[str, ...] = (),
    affine_ranges: AffineRanges = AffineRanges(),
    field_ranges: LocalFieldRanges = LocalFieldRanges(),
) -> EvaluationSet:
    """A folder of aligned pairs (``"pairs"`` or ``"nirscene"`` layout), each misaligned
    by a seeded synthetic transform of ``kind`` (``"affine"``, ``"local"``, ``"both"``).
    Only the pairs named in ``only`` (all if empty) are evaluated, and those named in
    ``exclude`` are left out (e.g. pairs known not to be aligned, whose own misalignment
    would corrupt the synthetic ground truth); split names (``rfnet_tf.data.splits``)
    stand for their pairs.

    Raises:
      DataError: bad input, a name the folder does not hold, or a folder of ``.mat``
        landmark files (those are already misaligned: evaluate them as landmark files).
    """
    if layout not in FOLDER_LAYOUTS:
        raise ValueError(f"layout must be one of {FOLDER_LAYOUTS}, got {layout!r}")
    if kind not in MISALIGNMENT_KINDS:
        raise ValueError(f"kind must be one of {MISALIGNMENT_KINDS}, got {kind!r}")
    if layout == "auto":
        layout = detect_layout(root, vis_dir, nir_dir)
        if layout == "landmarks":
            raise DataError(
                f"{root}: holds .mat landmark files, which are already misaligned: "
                "evaluate them with --landmarks_dir"
            )
    pairs = select_pairs(
        read_dataset(root, layout, vis_dir, nir_dir, skip_bad), only, exclude, where=str(root)
    )
    samples = [
        misalign(pair, kind, seed, num_landmarks, affine_ranges, field_ranges) for pair in pairs
    ]
    return EvaluationSet(
        samples=samples,
        source="data_dir",
        title=(
            f"{Path(root).resolve().name}: {len(samples)} real pair(s) under a synthetic "
            f"{kind} misalignment (seed {seed})"
        ),
        simulated=False,
        misalignment=kind,
        details={
            "data_dir": str(root),
            "layout": layout,
            "vis_dir": vis_dir,
            "nir_dir": nir_dir,
            "skip_bad": skip_bad,
            "pairs": list(only),
            "exclude": list(exclude),
            "seed": seed,
            "num_landmarks": num_landmarks,
            **misalignment_details(kind, affine_ranges, field_ranges),
        },
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
