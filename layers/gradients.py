"""Image gradient used throughout RFNet: the 4-neighbour Laplacian."""

from __future__ import annotations

import tensorflow as tf


def laplacian(image: tf.Tensor) -> tf.Tensor:
    """4-neighbour Laplacian ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` per channel.

    Replicate padding (ARCHITECTURE section 4, decision from the authors' code): zero
    padding would invent an edge along the image border.

    Args:
      image: ``(B, H, W, C)``.

    Returns:
      ``(B, H, W, C)``, same dtype.
    """
    # A one-pixel symmetric pad repeats the edge pixel, i.e. replicate padding.
    p = tf.pad(image, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    centre = p[:, 1:-1, 1:-1, :]
    return p[:, :-2, 1:-1, :] + p[:, 2:, 1:-1, :] + p[:, 1:-1, :-2, :] + p[:, 1:-1, 2:, :] - 4.0 * centre
