"""Data: readers for real VIS / NIR pairs, synthetic misalignment, tf.data pipelines, demo set.

* :mod:`~rfnet_tf.data.io`: :class:`Pair` and readers for the ``"pairs"``,
  ``"nirscene"``, ``"known_affine"`` and ``"landmarks"`` layouts (:func:`read_dataset`).
* :mod:`~rfnet_tf.data.synthetic`: random affine and smooth local misalignments with
  exact ground truth in both directions, and misaligned pairs with landmarks.
* :mod:`~rfnet_tf.data.pipelines`: seeded, deterministic ``tf.data`` pipelines for
  TransNet, AffineNet and F2M training.
* :mod:`~rfnet_tf.data.demo`: a demo set from scikit-image photographs with a
  simulated NIR.

All bad input raises :class:`DataError` (a ``ValueError``) naming the file.
"""

from rfnet_tf.data.demo import demo_misaligned, demo_pairs, simulate_nir
from rfnet_tf.data.errors import DataError
from rfnet_tf.data.io import (
    Pair,
    detect_layout,
    read_dataset,
    read_image,
    read_known_affine,
    read_landmark_folder,
    read_landmark_mat,
    read_nirscene,
    read_pair,
    read_pair_folder,
)
from rfnet_tf.data.pipelines import (
    Stream,
    affinenet_dataset,
    f2m_dataset,
    steps_per_epoch,
    transnet_dataset,
)
from rfnet_tf.data.synthetic import (
    AffineRanges,
    LocalField,
    LocalFieldRanges,
    MisalignedPair,
    SyntheticAffine,
    flip_affine,
    flip_flow,
    flip_image,
    invert_affine,
    invert_flow,
    make_misaligned_pair,
    random_affine,
    random_local_field,
    transform_points,
)

__all__ = [
    "AffineRanges",
    "DataError",
    "LocalField",
    "LocalFieldRanges",
    "MisalignedPair",
    "Pair",
    "Stream",
    "SyntheticAffine",
    "affinenet_dataset",
    "demo_misaligned",
    "demo_pairs",
    "detect_layout",
    "f2m_dataset",
    "flip_affine",
    "flip_flow",
    "flip_image",
    "invert_affine",
    "invert_flow",
    "make_misaligned_pair",
    "random_affine",
    "random_local_field",
    "read_dataset",
    "read_image",
    "read_known_affine",
    "read_landmark_folder",
    "read_landmark_mat",
    "read_nirscene",
    "read_pair",
    "read_pair_folder",
    "simulate_nir",
    "steps_per_epoch",
    "transform_points",
    "transnet_dataset",
]
