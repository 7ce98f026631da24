"""A small demo set made at run time from the photographs scikit-image ships.

Nothing here is real multi-modal data: the VIS images are ordinary RGB photographs
bundled with scikit-image (no download), and the NIR images are a *simulation* made
from them by a fixed mapping (:func:`simulate_nir`). The demo set exists so that the
pipelines, training scripts and evaluation can run anywhere, without ``../shared``;
results on it say nothing about real VIS / NIR registration or fusion.
"""

from __future__ import annotations

import numpy as np
import skimage.data

from rfnet_tf.data.io import Pair
from rfnet_tf.data.synthetic import (
    NOISE_STREAM,
    AffineRanges,
    LocalFieldRanges,
    MisalignedPair,
    pair_rng,
    seeded_misalignment,
)

DEMO_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
DEFAULT_NOISE_STD = 0.01

# Simulated NIR response (see simulate_nir): red-weighted luma ...
_NIR_RGB_WEIGHTS = np.array([0.6, 0.3, 0.1])
# ... plus this much of the excess-green vegetation index 2G - R - B ...
_VEGETATION_GAIN = 0.6
# ... minus this much of the excess blue (sky and water are dark in NIR) ...
_BLUE_PENALTY = 0.4
# ... then a brightening tone curve x ** gamma.
_TONE_GAMMA = 0.8


def simulate_nir(
    rgb: np.ndarray, rng: np.random.Generator | int | None = 0, noise_std: float = DEFAULT_NOISE_STD
) -> np.ndarray:
    """A *simulated* NIR image of an RGB photograph; not a physical model.

    A fixed, plausible mapping from RGB (all on ``[0, 1]``):

    1. a red-weighted luma ``0.6 R + 0.3 G + 0.1 B`` (silicon NIR response follows
       red more than blue);
    2. plus ``0.6 * clip(2G - R - B, 0, 1)``, the excess-green vegetation index:
       foliage reflects strongly in NIR;
    3. minus ``0.4 * clip(B - max(R, G), 0, 1)``: clear sky and water are dark in NIR;
    4. clipped to ``[0, 1]`` and put through the tone curve ``x ** 0.8``;
    5. plus Gaussian noise of standard deviation ``noise_std`` (seeded), clipped to
       ``[0, 1]``.

    Args:
      rgb: ``(H, W, 3)`` float in ``[0, 1]``.
      rng: a numpy Generator or an int seed, for the noise.
      noise_std: the sensor-noise standard deviation.

    Returns:
      ``(H, W, 1)`` ``float32`` in ``[0, 1]``.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    response = rgb @ _NIR_RGB_WEIGHTS
    response += _VEGETATION_GAIN * np.clip(2.0 * green - red - blue, 0.0, 1.0)
    response -= _BLUE_PENALTY * np.clip(blue - np.maximum(red, green), 0.0, 1.0)
    response = np.clip(response, 0.0, 1.0) ** _TONE_GAMMA
    response += np.random.default_rng(rng).normal(0.0, noise_std, size=response.shape)
    return np.clip(response, 0.0, 1.0).astype(np.float32)[..., None]


def demo_pairs(
    seed: int = 0, names: tuple[str, ...] = DEMO_IMAGES, noise_std: float = DEFAULT_NOISE_STD
) -> list[Pair]:
    """Aligned demo pairs: scikit-image photographs and their *simulated* NIR.

    The VIS is the photograph on ``[0, 1]`` (``(H, W, 3)`` ``float32``); the NIR is
    :func:`simulate_nir` of it, a simulation, not a NIR image. Only the NIR noise
    depends on ``seed`` (and on the photograph, not on which others are chosen). No
    paths, no landmarks.

    Args:
      seed: the noise seed.
      names: which ``skimage.data`` photographs (default: astronaut 512x512, coffee
        400x600, chelsea 300x451, rocket 427x640).
      noise_std: the simulated sensor-noise standard deviation.
    """
    pairs = []
    for name in names:
        vis = getattr(skimage.data, name)().astype(np.float32) / np.float32(255.0)
        nir = simulate_nir(vis, pair_rng(seed, name, NOISE_STREAM), noise_std)
        pairs.append(Pair(name=name, vis=vis, nir=nir))
    return pairs


def demo_misaligned(
    seed: int = 0,
    kind: str = "affine",
    num_landmarks: int = 5,
    names: tuple[str, ...] = DEMO_IMAGES,
    affine_ranges: AffineRanges = AffineRanges(),
    field_ranges: LocalFieldRanges = LocalFieldRanges(),
) -> list[MisalignedPair]:
    """The demo pairs with a seeded synthetic misalignment and ground-truth landmarks.

    Each entry's ``pair`` has the form the readers give real data (moving VIS, fixed
    simulated NIR, ``vis_points`` / ``nir_points`` landmarks); ``affine`` / ``field``
    hold the ground truth (see :func:`rfnet_tf.data.synthetic.make_misaligned_pair`).

    Args:
      seed: seeds the NIR noise and the misalignments.
      kind: ``"affine"``, ``"local"`` or ``"both"``.
      num_landmarks: landmark pairs per image.
      names: which photographs.
      affine_ranges, field_ranges: the misalignment ranges.
    """
    return [
        seeded_misalignment(pair, seed, kind, num_landmarks, affine_ranges, field_ranges)
        for pair in demo_pairs(seed, names)
    ]

