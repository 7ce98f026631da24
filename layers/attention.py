"""Gradient channel attention of F2M (paper Sec. 3.2, ARCHITECTURE section 2)."""

from __future__ import annotations

import keras
import tensorflow as tf

from layers.config import ConfigFromArguments
from layers.gradients import laplacian


def windowed_max(values: tf.Tensor, window: int) -> tf.Tensor:
    """Per channel, the mean over windows of the maximum in each window; ``(B, C)``.

    ``values`` ``(B, H, W, C)``. Along each axis of length ``n`` the windows have length
    ``w = min(window, n)``; there are ``k = ceil(n / w)`` of them, spread evenly from the
    first pixel to the last (start ``i * (n - w) // (k - 1)``), so that they cover the
    axis and overlap where ``w`` does not divide ``n``. Every window therefore has the
    same size, and an image no larger than ``window`` has one window: the global max.
    """
    values = tf.convert_to_tensor(values)
    shape = tf.shape(values)

    def window_indices(length):
        size = tf.minimum(window, length)
        count = (length + size - 1) // size
        spread = tf.range(count) * (length - size) // tf.maximum(count - 1, 1)
        return spread[:, None] + tf.range(size)[None, :]  # (count, size) indices

    rows = tf.gather(values, window_indices(shape[1]), axis=1)  # (B, ky, wy, W, C)
    rows = tf.reduce_max(rows, axis=2)  # (B, ky, W, C)
    cells = tf.gather(rows, window_indices(shape[2]), axis=2)  # (B, ky, kx, wx, C)
    return tf.reduce_mean(tf.reduce_max(cells, axis=3), axis=[1, 2])


@keras.saving.register_keras_serializable(package="rfnet_tf")
class GradientChannelAttention(ConfigFromArguments, keras.layers.Layer):
    """Shared channel weights for two feature maps from their gradient content.

    For ``F_x, F_y`` of shape ``(B, H, W, C)``: ``G = |laplacian(F)|`` per channel;
    ``a = avgpool(G_x) + avgpool(G_y)``, ``m = maxpool(G_x) + maxpool(G_y)`` (global,
    ``(B, C)``); ``w = sigmoid(MLP_a(a) + MLP_m(m))`` with two separate MLPs
    ``C -> max(1, C // reduction) -> C`` (no activation between, biases on). Both maps
    are multiplied by the same ``w``.

    Called on ``[F_x, F_y]``; returns ``[F_x * w, F_y * w]``.

    ``max_pool_window`` (an extension, ``None`` by default: the global max above) takes
    ``m`` as ``windowed_max`` over windows of that many pixels instead. The maximum of a
    map grows with its size, while its mean does not: a network trained on crops of
    ``S`` pixels and run on a larger image sees larger ``m`` than it ever saw in
    training, and so other channel weights. With ``max_pool_window = S`` every training
    crop is one window (the layer is unchanged there) and a larger image gets the
    statistic of crops of ``S``.
    """

    CONFIG_ARGUMENTS = ("reduction", "max_pool_window")

    def __init__(self, reduction: int = 8, max_pool_window: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        if max_pool_window is not None and max_pool_window < 1:
            raise ValueError(f"max_pool_window must be None or >= 1, got {max_pool_window}")
        self.reduction = int(reduction)
        self.max_pool_window = None if max_pool_window is None else int(max_pool_window)

    def build(self, input_shape):
        shape_x, shape_y = input_shape
        channels = shape_x[-1]
        if channels is None or shape_y[-1] != channels:
            raise ValueError(
                f"both feature maps need the same, known channel count; got {shape_x}, {shape_y}"
            )
        hidden = max(1, channels // self.reduction)
        self.avg_hidden = keras.layers.Dense(hidden, name="avg_mlp_hidden")
        self.avg_out = keras.layers.Dense(channels, name="avg_mlp_out")
        self.max_hidden = keras.layers.Dense(hidden, name="max_mlp_hidden")
        self.max_out = keras.layers.Dense(channels, name="max_mlp_out")
        for layer, size in (
            (self.avg_hidden, channels),
            (self.avg_out, hidden),
            (self.max_hidden, channels),
            (self.max_out, hidden),
        ):
            layer.build((None, size))

    def channel_weights(self, features_x: tf.Tensor, features_y: tf.Tensor) -> tf.Tensor:
        """``(B, 1, 1, C)`` attention weights in ``(0, 1)``."""
        grad_x = tf.abs(laplacian(features_x))
        grad_y = tf.abs(laplacian(features_y))
        pooled_avg = tf.reduce_mean(grad_x, axis=[1, 2]) + tf.reduce_mean(grad_y, axis=[1, 2])
        pooled_max = self._max_pool(grad_x) + self._max_pool(grad_y)
        logits = self.avg_out(self.avg_hidden(pooled_avg)) + self.max_out(self.max_hidden(pooled_max))
        return tf.sigmoid(logits)[:, None, None, :]

    def _max_pool(self, values: tf.Tensor) -> tf.Tensor:
        if self.max_pool_window is None:
            return tf.reduce_max(values, axis=[1, 2])
        return windowed_max(values, self.max_pool_window)

    def call(self, inputs):
        features_x, features_y = inputs
        weights = self.channel_weights(features_x, features_y)
        return [features_x * weights, features_y * weights]

    def compute_output_shape(self, input_shape):
        return [tuple(input_shape[0]), tuple(input_shape[1])]

