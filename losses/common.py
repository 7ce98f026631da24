"""Helpers shared by the losses: masked means, the mask of valid Laplacians, shape checks.

A mask ``(B, H, W, 1)`` marks the valid region of a warped image (1 inside, 0 where
the resampler read outside the moving image, ARCHITECTURE section 1). It weights the
pixels: a masked mean is ``sum(x * mask) / max(sum(mask), 1)`` per image, with the mask
broadcast over the channels of ``x`` (so each valid pixel counts once per channel), and
a loss is the mean of its images' values. Values under
a zero mask must be finite (they are multiplied by zero); they then have no influence
on the result nor receive any gradient.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def matching_tensors(reference, *others) -> list[tf.Tensor]:
    """``[reference, *others]`` as tensors, the others cast to ``reference``'s dtype.

    Raises ``ValueError`` where a static shape differs from ``reference``'s (unknown
    dimensions pass): a ``(B, H, W, 3)`` image against a ``(B, H, W, 1)`` one would
    otherwise broadcast silently.
    """
    reference = tf.convert_to_tensor(reference)
    others = [tf.cast(other, reference.dtype) for other in others]
    for other in others:
        other.shape.assert_is_compatible_with(reference.shape)
    return [reference, *others]


def masked_mean(
    x: tf.Tensor,
    mask: tf.Tensor | None = None,
    axis: int | Sequence[int] | None = None,
    keepdims: bool = False,
) -> tf.Tensor:
    """Mean of ``x`` over ``axis``, counting only pixels where ``mask`` is 1.

    Args:
      x: ``(B, H, W, C)``.
      mask: ``(B, H, W, 1)`` (or ``(B, H, W, C)``) in ``{0, 1}``, or ``None`` for a
        plain mean. Broadcast over the channels of ``x``.
      axis: axes to average over. ``None`` means the loss convention: the masked mean
        of each image, then the mean over the batch. Every image weighs the same, so a
        batch split across replicas (``tf.distribute``) gives exactly the loss of the
        whole batch.
      keepdims: keep the reduced axes with length 1 (only with an explicit ``axis``).

    Returns:
      ``sum(x * mask) / max(sum(mask), 1)`` over ``axis``; 0 for an image with no
      valid pixel.
    """
    if axis is None:
        return tf.reduce_mean(masked_mean(x, mask, axis=[1, 2, 3]))
    if mask is None:
        return tf.reduce_mean(x, axis=axis, keepdims=keepdims)
    weights = tf.broadcast_to(tf.cast(mask, x.dtype), tf.shape(x))
    total = tf.reduce_sum(x * weights, axis=axis, keepdims=keepdims)
    count = tf.reduce_sum(weights, axis=axis, keepdims=keepdims)
    return total / tf.maximum(count, 1.0)


def laplacian_valid_mask(mask: tf.Tensor) -> tf.Tensor:
    """Where the 4-neighbour Laplacian reads valid pixels only.

    ``layers.laplacian`` at ``p`` reads ``p`` and its four neighbours, so it is free of
    the invalid (black) border only where all five are valid: the mask eroded by that
    cross. Beyond the image edge the Laplacian replicates the edge pixel, so the mask is
    replicated there too (the image edge itself erodes nothing). Using this mask for
    the gradient terms keeps the artificial edge along the border of a warped image out
    of the losses, and makes them independent of the values under the invalid region.

    Args:
      mask: ``(B, H, W, 1)`` in ``{0, 1}``.

    Returns:
      ``(B, H, W, 1)``, the minimum of ``mask`` over each pixel's 4-neighbour cross.
    """
    mask = tf.convert_to_tensor(mask)
    # A one-pixel symmetric pad repeats the edge pixel, as in layers.laplacian.
    p = tf.pad(mask, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    neighbours = [p[:, :-2, 1:-1, :], p[:, 2:, 1:-1, :], p[:, 1:-1, :-2, :], p[:, 1:-1, 2:, :]]
    eroded = mask
    for neighbour in neighbours:
        eroded = tf.minimum(eroded, neighbour)
    return eroded
