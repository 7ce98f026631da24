"""F2M's correlation deformation block (``F2M(deformation_block="correlation")``), an
option beside the paper's U-Net block (ARCHITECTURE section 7, issue 17).

The paper's block maps the concatenated shallow features of the two images to a flow and
must discover on its own that the flow is where the features agree. This block compares
them explicitly, as AffineNet's matching head does: a siamese encoder turns each
image's edge map (:func:`edge_map`) into descriptors on a grid of ``STRIDE`` px cells, and the cosine similarity of
every NIR cell with the VIS cells within ``radius`` cells is the cost volume. A cell's
flow is a learnt share of the cost volume's local soft-argmax (its best match, as
AffineNet's matching head reads matches) plus a bounded correction that a small decoder reads off the cost volume
and the NIR descriptors. The flow is upsampled bilinearly to the pixels.

Conventions: descriptor grids ``(B, h, w, C)`` with ``h = H / STRIDE``; cell ``(i, j)``
is centred on pixel ``(STRIDE i + (STRIDE - 1) / 2, STRIDE j + (STRIDE - 1) / 2)``
(half-pixel centres, as ``tf.image.resize`` samples); flows ``(dy, dx)`` in pixels of
the input, backward (``registered[p] = moving[p + flow[p]]``).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from layers.config import ConfigFromArguments
from losses import gradient_magnitude
from rfnet_tf.networks.matching import displacement_offsets, expected_displacement

# The encoder's two stride-2 convolutions: one descriptor per 4 x 4 pixels.
STRIDE = 4
# Keeps the normalisation of an all-zero descriptor (a flat patch) finite.
_NORM_EPSILON = 1e-6
# The soft-argmax's initial sharpness (trained): the cost is a cosine similarity in
# [-1, 1], so a match better by 0.1 is e times as probable.
INITIAL_SHARPNESS = 10.0


def shifted_correlation(fixed: tf.Tensor, moving: tf.Tensor, radius: int) -> tf.Tensor:
    """The correlation of each fixed cell with the moving cells around it, one shifted
    copy of ``moving`` per displacement.

    Same result as :func:`rfnet_tf.networks.matching.local_correlation`, whose every-pair
    product needs ``(h w)^2`` numbers per image (7.6 GB for a 1024x680 image at a 4 px
    stride); this needs ``(2 radius + 1)^2 h w``.

    Args:
      fixed, moving: ``(B, h, w, C)`` descriptor grids of one size.
      radius: the largest displacement, in cells, on each axis (a Python int).

    Returns:
      ``(B, h, w, (2 radius + 1)^2)``: channel ``k`` at ``p`` is
      ``mean_c fixed[p, c] * moving[p + d_k, c]`` with ``d_k`` the ``k``-th row of
      :func:`~rfnet_tf.networks.matching.displacement_offsets`; 0 where ``p + d_k``
      leaves the grid.
    """
    shape = tf.shape(fixed)
    height, width = shape[1], shape[2]
    padded = tf.pad(moving, [[0, 0], [radius, radius], [radius, radius], [0, 0]])
    channels = []
    for dy, dx in displacement_offsets(radius).astype(int):
        window = padded[:, radius + dy : radius + dy + height, radius + dx : radius + dx + width]
        channels.append(tf.reduce_mean(fixed * window, axis=-1))
    return tf.stack(channels, axis=-1)


def unit_descriptors(features: tf.Tensor) -> tf.Tensor:
    """``features`` ``(B, h, w, C)`` centred over the channels and scaled to unit length
    at each cell, so that their correlation times ``C`` is a cosine similarity."""
    centred = features - tf.reduce_mean(features, axis=-1, keepdims=True)
    return centred * tf.math.rsqrt(tf.reduce_sum(tf.square(centred), axis=-1, keepdims=True) + _NORM_EPSILON)


def edge_map(image: tf.Tensor) -> tf.Tensor:
    """``image`` ``(B, H, W, C)``'s gradient magnitude (``losses.gradient_magnitude``,
    per channel) over its mean over the image: the same for ``a * image + b`` with any
    ``a != 0``, so for a contrast of either sign.

    The block reads edge maps, not intensities: where VIS and NIR differ in brightness
    and in the sign of an edge's contrast (vegetation is dark in VIS, bright in NIR),
    the edges still coincide. Supervised on real Country crops, the block on the
    intensities stayed at zero flow's error for 400 steps, on the edge maps it was 10 %
    below it by step 200 (``weights/README.md``, F2M item 14).
    """
    magnitude = gradient_magnitude(image)
    return magnitude / (tf.reduce_mean(magnitude, axis=[1, 2], keepdims=True) + _NORM_EPSILON)


def _conv(filters: int, name: str, strides: int = 1, **kwargs) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, 3, strides=strides, padding="same", name=name, **kwargs)


@keras.saving.register_keras_serializable(package="rfnet_tf")
class CorrelationBlock(ConfigFromArguments, keras.layers.Layer):
    """Siamese encoder, cost volume and decoder: a bounded dense flow.

    Input ``concat(moving, fixed)`` ``(B, H, W, 2 C)`` (F2M passes the VIS luma and the
    NIR, ``C = 1``) with H, W multiples of ``STRIDE``, read as :func:`edge_map`\ s; output ``(B, H, W, 2)``
    = ``(dy, dx)`` pixels: on the cell grid, ``match_weight * STRIDE`` times the local
    soft-argmax of ``softmax(sharpness * cost)``
    (:func:`~rfnet_tf.networks.matching.expected_displacement`, at most ``radius``
    cells) plus ``max_displacement * tanh(head)``, upsampled bilinearly. The head and
    ``match_weight`` start at zero, so the flow is exactly 0 until phase 2 trains them.
    The matches give the encoder a gradient from the first step: through the head alone
    it gets none until the head has grown (a zero-initialised head), and on real crops
    such a block stayed at zero flow (``weights/README.md``, F2M item 12). No batch
    norm: the flow of a pair does not depend on its batch.

    Args:
      max_displacement: bound of the decoder's correction in pixels.
      filters: channels of the descriptors.
      radius: the cost volume's reach in cells (``STRIDE * radius`` px on each axis).
    """

    CONFIG_ARGUMENTS = ("max_displacement", "filters", "radius")

    def __init__(self, max_displacement: float = 16.0, filters: int = 64, radius: int = 4, **kwargs):
        super().__init__(**kwargs)
        if radius < 1 or filters < 1:
            raise ValueError(f"radius and filters must be >= 1, got {radius} and {filters}")
        self.max_displacement = float(max_displacement)
        self.filters = int(filters)
        self.radius = int(radius)
        self.activation = keras.layers.LeakyReLU(negative_slope=0.2)
        # One attribute per convolution: tf.train.Checkpoint does not follow layers held
        # in Python lists of a Keras 3 layer.
        self.encoder1 = _conv(32, "encoder1")
        self.encoder2 = _conv(self.filters, "encoder2", strides=2)
        self.encoder3 = _conv(self.filters, "encoder3")
        self.encoder4 = _conv(self.filters, "encoder4", strides=2)
        self.encoder5 = _conv(self.filters, "encoder5")
        self.decoder1 = _conv(96, "decoder1")
        self.decoder2 = _conv(64, "decoder2")
        self.decoder3 = _conv(32, "decoder3")
        self.head = _conv(2, "flow_head", kernel_initializer="zeros", bias_initializer="zeros")
        # Learnt in the log domain, so that it stays positive (as AffineNet's).
        self.log_sharpness = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(math.log(INITIAL_SHARPNESS)),
            name="log_sharpness",
        )
        # The matches' share of the flow, from 0: a new block's flow is zero, as the
        # paper's phase 2 starts, and the share grows as far as the matches agree with
        # the training signal.
        self.match_weight = self.add_weight(
            shape=(), initializer="zeros", name="match_weight"
        )

    @property
    def encoder(self) -> list[keras.layers.Conv2D]:
        return [self.encoder1, self.encoder2, self.encoder3, self.encoder4, self.encoder5]

    @property
    def decoder(self) -> list[keras.layers.Conv2D]:
        return [self.decoder1, self.decoder2, self.decoder3]

    def build(self, input_shape):
        channels = input_shape[-1] // 2
        shape = (None, None, None, channels)
        for layer in self.encoder:
            layer.build(shape)
            shape = (None, None, None, layer.filters)
        shape = (None, None, None, (2 * self.radius + 1) ** 2 + self.filters)
        for layer in self.decoder:
            layer.build(shape)
            shape = (None, None, None, layer.filters)
        self.head.build(shape)

    def _describe(self, features: tf.Tensor) -> tf.Tensor:
        for layer in self.encoder[:-1]:
            features = self.activation(layer(features))
        return unit_descriptors(self.encoder[-1](features))

    def call(self, inputs):
        images_vis, images_nir = tf.split(inputs, 2, axis=-1)
        moving, fixed = self._describe(edge_map(images_vis)), self._describe(edge_map(images_nir))
        # Times the channel count: the cosine similarity of the two cells, in [-1, 1].
        cost = shifted_correlation(fixed, moving, self.radius) * float(self.filters)
        h = tf.concat([cost, fixed], axis=-1)
        for layer in self.decoder:
            h = self.activation(layer(h))
        matches, _ = expected_displacement(cost, tf.exp(self.log_sharpness), self.radius)
        cells = self.match_weight * STRIDE * matches + self.max_displacement * tf.tanh(self.head(h))
        shape = tf.shape(inputs)
        return tf.image.resize(cells, shape[1:3], method="bilinear")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2,)
