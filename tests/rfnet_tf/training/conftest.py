"""Small generated training pairs and batches shared by the training tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from rfnet_tf.data import Pair

CROP = 32
BATCH = 2


def textured_pair(name: str, height: int, width: int, seed: int) -> Pair:
    """A smooth random RGB texture and a NIR that is a different (monotone) mix of it."""
    rng = np.random.default_rng(seed)
    channels = [gaussian_filter(rng.standard_normal((height, width)), 2.0) for _ in range(3)]
    vis = np.stack([(c - c.min()) / (c.max() - c.min()) for c in channels], axis=-1)
    nir = np.clip(0.2 + 0.5 * vis[..., 1:2] + 0.3 * vis[..., 0:1] ** 2, 0.0, 1.0)
    return Pair(name=name, vis=vis.astype(np.float32), nir=nir.astype(np.float32))


@pytest.fixture(scope="session")
def training_pairs() -> list[Pair]:
    return [textured_pair(f"pair{i}", 48 + 8 * i, 56, seed=i) for i in range(3)]
