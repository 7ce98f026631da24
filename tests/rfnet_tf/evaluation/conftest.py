"""Fixtures of the evaluation tests: small textured pairs and untrained RFNet weights."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rfnet_tf.data import Pair
from rfnet_tf.networks import RFNet
from rfnet_tf.weights import PARTS, export_weights

# Small enough for speed; AffineNet's three poolings still leave a 4x4 map.
AFFINE_INPUT_SIZE = 32


def textured_rgb(rng: np.random.Generator, shape=(64, 80)) -> np.ndarray:
    """``(H, W, 3)`` float32 in [0, 1]: smooth multi-scale texture, correlated channels."""
    base = sum(ndimage.gaussian_filter(rng.normal(size=shape), s) * s for s in (1.5, 4.0, 10.0))
    base = (base - base.min()) / (base.max() - base.min())
    channels = [np.clip(base + 0.1 * rng.normal(size=shape).clip(-1, 1) * k, 0, 1) for k in (0.2, 0.4, 0.6)]
    return np.stack(channels, axis=-1).astype(np.float32)


def nir_of(rgb: np.ndarray) -> np.ndarray:
    """A different 'modality': a monotone non-linear map of a red-weighted luma."""
    response = rgb @ np.array([0.6, 0.3, 0.1])
    return (response**0.7).astype(np.float32)[..., None]


def make_pair(rng: np.random.Generator, shape=(64, 80), name: str = "pair") -> Pair:
    rgb = textured_rgb(rng, shape)
    return Pair(name=name, vis=rgb, nir=nir_of(rgb))


@pytest.fixture
def aligned_pair(rng) -> Pair:
    return make_pair(rng)


@pytest.fixture(scope="session")
def untrained_model() -> RFNet:
    """An untrained RFNet whose affine and flow heads have small random weights, so that
    its affine is not the identity and its flow not zero (a fresh model gives both)."""
    model = RFNet(affine_input_size=AFFINE_INPUT_SIZE)
    generator = np.random.default_rng(7)
    for head, scale in ((model.affinenet.head, 0.02), (model.f2m.deformation_block.head, 0.05)):
        for variable in (head.kernel, head.bias):
            variable.assign(scale * generator.standard_normal(variable.shape).astype(np.float32))
    return model


@pytest.fixture(scope="session")
def weights_dirs(untrained_model, tmp_path_factory):
    """``{"full": dir, "coarse": dir, "f2m": dir}``: the untrained model's complete
    weights, its coarse module alone (as the AffineNet training stage exports it) and
    F2M alone (as an F2M training run without a coarse module exports it)."""
    root = tmp_path_factory.mktemp("weights")
    return {
        "full": export_weights(untrained_model, root / "full", PARTS),
        "coarse": export_weights(untrained_model, root / "coarse", ("transnet", "affinenet")),
        "f2m": export_weights(untrained_model, root / "f2m", ("f2m",)),
    }
