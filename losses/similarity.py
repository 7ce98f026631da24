"""The NCC of gradient magnitudes: a similarity for the coarse search, beyond the paper.

Eq. 5's global NCC compares the whole translated image with the whole NIR, so a wrong
affine that lines up large bright and dark regions (sky on sky, a field on a field) can
score as high as the true one (ARCHITECTURE section 7, the coarse search). Comparing
where the edges are instead, whatever their contrast's sign, ranks the true alignment
first. Images are ``(B, H, W, 1)`` in ``[0, 1]``; a mask ``(B, H, W, 1)`` in
``{0, 1}`` marks the valid pixels of a warped image, and a pixel counts only where every
pixel its gradient reads is valid, so the edge of a warped image's black outside never
counts as an edge.
"""

from __future__ import annotations

import tensorflow as tf

from losses.common import matching_tensors
from losses.registration import ncc


def fully_valid(mask: tf.Tensor, window: int) -> tf.Tensor:
    """``(B, H, W, 1)``: 1 where every pixel of the ``window x window`` neighbourhood
    (odd ``window``) is inside the image and valid; beyond the border counts as invalid.
    ``window = 1`` returns ``mask``."""
    if window == 1:
        return mask
    half = window // 2
    padded = tf.pad(mask, [[0, 0], [half, half], [half, half], [0, 0]])
    valid_share = tf.nn.avg_pool2d(padded, window, 1, "VALID")
    return tf.cast(valid_share > 1.0 - 0.5 / window**2, mask.dtype)


def gradient_magnitude(image: tf.Tensor) -> tf.Tensor:
    """``(B, H, W, 1)``: ``sqrt(d_y^2 + d_x^2)`` of central differences (half the
    difference of the two neighbours), replicate padding at the border."""
    padded = tf.pad(image, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    d_y = 0.5 * (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1])
    d_x = 0.5 * (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2])
    # The small constant keeps the square root differentiable on flat regions.
    return tf.sqrt(d_y * d_y + d_x * d_x + 1e-8)


def feature_ncc(s: tf.Tensor, g: tf.Tensor, mask, feature, window: int) -> tf.Tensor:
    """Eq. 5's NCC of ``feature(s)`` and ``feature(g)`` over the pixels whose
    ``window x window`` neighbourhood is valid (the pixels ``feature`` reads).

    Args:
      s, g: ``(B, H, W, 1)``; mask: ``(B, H, W, 1)`` or ``None``.
      feature: ``(B, H, W, 1) -> (B, H, W, 1)``; window: odd side, px.

    Returns:
      ``(B,)`` in ``[-1, 1]``.
    """
    s, g = matching_tensors(s, g)
    valid = None if mask is None else fully_valid(tf.cast(mask, s.dtype), window)
    return ncc(feature(s), feature(g), valid)


def gradient_ncc(s: tf.Tensor, g: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
    """Eq. 5's NCC of the two images' gradient magnitudes (:func:`gradient_magnitude`),
    over the pixels whose 3x3 neighbourhood is valid: edges must coincide, whatever
    their contrast's sign. ``(B, H, W, 1)`` images and mask (or ``None``) -> ``(B,)``."""
    return feature_ncc(s, g, mask, gradient_magnitude, 3)
