"""Full-range BT.601 YCbCr (the JPEG formulas) on ``[0, 1]`` intensities.

ARCHITECTURE section 1: the networks see the luma ``Y`` of the visible image; the fused
RGB image re-attaches the registered visible image's ``Cb, Cr`` to the fused luma.
Cb and Cr carry an offset of 0.5, so a grey pixel has ``Cb = Cr = 0.5``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Rows give (Y, Cb, Cr) from (R, G, B), without the 0.5 chroma offset.
_RGB_TO_YCBCR = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168735892, -0.331264108, 0.5],
        [0.5, -0.418687589, -0.081312411],
    ],
    dtype=np.float64,
)
# The exact inverse, so that a round trip is the identity up to float32 round-off.
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)
_CHROMA_OFFSET = np.array([0.0, 0.5, 0.5])


def _apply(matrix: np.ndarray, image: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.shape[-1] != 3:
        raise ValueError(f"expected 3 channels in the last axis, got shape {image.shape}")
    return tf.tensordot(image, tf.constant(matrix.T, image.dtype), axes=1)


def rgb_to_ycbcr(rgb: tf.Tensor) -> tf.Tensor:
    """``(..., 3)`` RGB in ``[0, 1]`` -> ``(..., 3)`` YCbCr, chroma offset 0.5."""
    rgb = tf.convert_to_tensor(rgb)
    return _apply(_RGB_TO_YCBCR, rgb) + tf.constant(_CHROMA_OFFSET, rgb.dtype)


def ycbcr_to_rgb(ycbcr: tf.Tensor) -> tf.Tensor:
    """``(..., 3)`` YCbCr (chroma offset 0.5) -> ``(..., 3)`` RGB, not clipped."""
    ycbcr = tf.convert_to_tensor(ycbcr)
    return _apply(_YCBCR_TO_RGB, ycbcr - tf.constant(_CHROMA_OFFSET, ycbcr.dtype))


def luma(image: tf.Tensor) -> tf.Tensor:
    """``(..., 1)`` luma ``Y`` of ``(..., 3)`` RGB; a ``(..., 1)`` image is returned as is."""
    image = tf.convert_to_tensor(image)
    if image.shape[-1] == 1:
        return image
    weights = tf.constant(_RGB_TO_YCBCR[0], image.dtype)
    return tf.reduce_sum(image * weights, axis=-1, keepdims=True)
