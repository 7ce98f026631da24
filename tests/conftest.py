"""Shared fixtures: where the real data and reference files live, and skips without them;
a known-affine benchmark folder made from real pairs at test time."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
# The known-affine fixture: real Country pairs filed under two categories, each NIR
# warped by an affine of (rotation degrees, scale, x shift px, y shift px) about the
# image centre, at this width (small, for speed).
KNOWN_AFFINES = {
    "field/0009": (8.0, 1.05, 12.0, -7.0),
    "field/0027": (-11.0, 0.93, -15.0, 9.0),
    "forest/0034": (4.0, 1.0, 20.0, 14.0),
}
KNOWN_AFFINE_WIDTH = 256
# This pair's NIR is stored as 3 identical channels, as the benchmark stores some.
KNOWN_AFFINE_THREE_CHANNEL_NIR = "field/0027"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the real data and reference files live in ../shared")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def vis_nir_dir() -> Path:
    """10 aligned RGB / NIR pairs (RGB-NIR Scene), folders ``vis/`` and ``nir/``."""
    return _require(SHARED / "data" / "vis_nir")


@pytest.fixture(scope="session")
def roadscene_dir() -> Path:
    """221 aligned RGB / thermal IR pairs (RoadScene), folders ``vis/`` and ``ir/``."""
    return _require(SHARED / "data" / "roadscene")


@pytest.fixture(scope="session")
def deform_conv_reference() -> Path:
    """torchvision ``deform_conv2d`` outputs and gradients (format: tests/layers)."""
    return _require(SHARED / "reference" / "deform_conv2d_torchvision.npz")


@pytest.fixture(scope="session")
def country_dir() -> Path:
    """52 aligned RGB / NIR JPEG pairs (RGB-NIR Scene ``country``): ``NNNN_rgb.jpg``,
    ``NNNN_nir.jpg``."""
    return _require(SHARED / "data" / "rgbnir_country" / "country")


@pytest.fixture(scope="session")
def known_affine_dir(country_dir, tmp_path_factory) -> Path:
    """A folder of the known-affine layout made now from real pairs (never stored in the
    repository): ``<category>/NNNN_rgb.jpg`` (the pair's RGB, resized to
    ``KNOWN_AFFINE_WIDTH``), ``NNNN_nir.jpg`` (its NIR, resized, then warped by
    ``cv2.warpAffine`` with ``M``) and ``NNNN_nir.npy`` (``M``, float64 2x3) for every
    pair of ``KNOWN_AFFINES``."""
    root = tmp_path_factory.mktemp("known_affine")
    for name, (degrees, scale, shift_x, shift_y) in KNOWN_AFFINES.items():
        category, number = name.split("/")
        rgb = cv2.imread(str(country_dir / f"{number}_rgb.jpg"), cv2.IMREAD_COLOR)
        nir = cv2.imread(str(country_dir / f"{number}_nir.jpg"), cv2.IMREAD_GRAYSCALE)
        width = KNOWN_AFFINE_WIDTH
        height = round(rgb.shape[0] * width / rgb.shape[1])
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        nir = cv2.resize(nir, (width, height), interpolation=cv2.INTER_AREA)
        matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, scale)
        matrix[:, 2] += (shift_x, shift_y)
        warped = cv2.warpAffine(nir, matrix, (width, height))
        if name == KNOWN_AFFINE_THREE_CHANNEL_NIR:
            warped = np.repeat(warped[..., None], 3, axis=-1)
        (root / category).mkdir(exist_ok=True)
        cv2.imwrite(str(root / category / f"{number}_rgb.jpg"), rgb)
        cv2.imwrite(str(root / category / f"{number}_nir.jpg"), warped)
        np.save(root / category / f"{number}_nir.npy", matrix.astype(np.float64))
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
