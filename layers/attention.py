"""Gradient channel attention of F2M (paper Sec. 3.2, ARCHITECTURE section 2)."""

from __future__ import annotations

import keras
import tensorflow as tf

from layers.gradients import laplacian


@keras.saving.register_keras_serializable(package="rfnet_tf")
class GradientChannelAttention(keras.layers.Layer):
    """Shared channel weights for two feature maps from their gradient content.

    For ``F_x, F_y`` of shape ``(B, H, W, C)``: ``G = |laplacian(F)|`` per channel;
    ``a = avgpool(G_x) + avgpool(G_y)``, ``m = maxpool(G_x) + maxpool(G_y)`` (global,
    ``(B, C)``); ``w = sigmoid(MLP_a(a) + MLP_m(m))`` with two separate MLPs
    ``C -> max(1, C // reduction) -> C`` (no activation between, biases on). Both maps
    are multiplied by the same ``w``.

    Called on ``[F_x, F_y]``; returns ``[F_x * w, F_y * w]``.
    """

    def __init__(self, reduction: int = 8, **kwargs):
        super().__init__(**kwargs)
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        self.reduction = int(reduction)

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
        pooled_max = tf.reduce_max(grad_x, axis=[1, 2]) + tf.reduce_max(grad_y, axis=[1, 2])
        logits = self.avg_out(self.avg_hidden(pooled_avg)) + self.max_out(self.max_hidden(pooled_max))
        return tf.sigmoid(logits)[:, None, None, :]

    def call(self, inputs):
        features_x, features_y = inputs
        weights = self.channel_weights(features_x, features_y)
        return [features_x * weights, features_y * weights]

    def compute_output_shape(self, input_shape):
        return [tuple(input_shape[0]), tuple(input_shape[1])]

    def get_config(self):
        config = super().get_config()
        config.update(reduction=self.reduction)
        return config
