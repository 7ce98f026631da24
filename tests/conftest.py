"""Shared fixtures: where the real data and reference files live, and skips without them."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


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


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
