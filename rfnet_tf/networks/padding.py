"""Pad images to a multiple of the networks' downsampling factor, and crop back."""

from __future__ import annotations

import tensorflow as tf


def pad_to_multiple(image: tf.Tensor, multiple: int) -> tf.Tensor:
    """Reflect-pads ``(B, H, W, C)`` at the bottom and right to multiples of ``multiple``.

    Reflect padding (not zeros) so that no artificial edge enters the networks. It
    needs ``H, W > multiple - 1`` when padding is required.
    """
    shape = tf.shape(image)
    pad_h = (-shape[1]) % multiple
    pad_w = (-shape[2]) % multiple
    return tf.pad(image, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="REFLECT")


def crop_to(image: tf.Tensor, height, width) -> tf.Tensor:
    """The top-left ``(B, height, width, C)`` of ``image``: undoes ``pad_to_multiple``."""
    return image[:, :height, :width, :]
