"""AffineNet: global affine registration with deformable convolutions (paper Sec. 3.1.2)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from layers import DeformableConv2D
from rfnet_tf.networks.matching import affine_from_matches

IDENTITY_AFFINE = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
STAGE_FILTERS = (16, 32, 64)
# Standard deviation of the head's initial kernel. Not zero: the gradient reaching every
# layer below the head is proportional to its kernel, and while the new network's
# features say nothing about the misalignment the kernel's own gradient averages to
# zero, so a zero kernel stays zero and nothing below it ever learns (weights/README.md,
# issue 15). Small, so that a new network predicts the identity to a fraction of a pixel.
HEAD_INIT_STDDEV = 1e-3
HEADS = ("pooled", "matching")
# The matching head's initial sharpness: the correlation is a cosine over the channel
# count, and softmax(40 * cosine) prefers a cell whose cosine is higher by 0.1 by e^4.
# (A new network finds about 80 % of a known shift and rotation of smooth noise at 10, 40
# or 100: the value matters little.)
INITIAL_SHARPNESS = 40.0 * STAGE_FILTERS[-1]
# Pulls the fitted affine towards the identity by about 0.3 % of the point spread (the
# mean squared normalised coordinate is 1/3): enough to keep the fit solvable, too little
# to bias it.
MATCHING_RIDGE = 1e-3


@keras.saving.register_keras_serializable(package="rfnet_tf")
class AffineNet(keras.Model):
    """Predicts the affine that registers the moving image onto the fixed one.

    ARCHITECTURE section 3: three stages of [conv 9x9 + LeakyReLU(0.2),
    DeformableConv2D 3x3 + LeakyReLU, max-pool 2] with 16, 32, 64 filters; conv 7x7 -> 64
    and conv 7x7 -> 128 (LeakyReLU); global average pool; dropout 0.2; a dense layer -> 6
    numbers ``d``; ``A = identity + reshape(d, (2, 3))``. No
    normalisation. The head's bias starts at zero and its kernel at small random values
    (``HEAD_INIT_STDDEV``), so a new network predicts nearly the identity and its
    convolutions still receive a gradient (a zero kernel would pass them none).

    With ``head="matching"`` (beyond the spec, and the shipped weights' head:
    docs/ARCHITECTURE.md section 7, weights/README.md items 14-15) the same three stages
    run on each image alone, with shared weights; the two feature maps (1/8 of the
    input, centred and L2-normalised per cell) are correlated over
    ``correlation_radius`` cells, each cell's displacement is the mean of its softmax
    distribution around its peak, and the affine is their robust least-squares fit
    weighted by the probability near each peak, over the mutual matches
    (``rfnet_tf.networks.matching``).

    Args:
      deformable: use deformable convolutions; ``False`` replaces each by a plain 3x3
        convolution (the paper's ablation ii).
      dropout: dropout rate before the pooled head's dense layer (the matching head has
        none).
      head: ``"pooled"`` (the spec's reading of the paper) or ``"matching"`` (the shipped one).
      correlation_radius: the matching head's largest displacement per axis, in cells of
        8 input pixels (8: 64 px, a third of the 192 px input).

    Called on ``(B, H, W, 2)`` = ``concat(I_x->y, I_y)`` (the translated moving VIS and
    the fixed NIR; RFNet feeds 384x384), returns ``(B, 2, 3)`` float32 (under any dtype
    policy): the backward affine in the normalised align-corners convention,
    ``registered[p] = moving[A @ [u, v, 1]]``.
    """

    def __init__(
        self,
        deformable: bool = True,
        dropout: float = 0.2,
        head: str = "pooled",
        correlation_radius: int = 8,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if correlation_radius < 1:
            raise ValueError(f"correlation_radius must be >= 1, got {correlation_radius}")
        self.deformable = bool(deformable)
        self.dropout_rate = float(dropout)
        self.head_kind = head
        self.correlation_radius = int(correlation_radius)
        # One attribute per layer: tf.train.Checkpoint does not follow layers held in
        # Python lists of a Keras 3 layer, so a list would drop them from checkpoints.
        for index, filters in enumerate(STAGE_FILTERS, start=1):
            local = (
                DeformableConv2D(filters, 3, name=f"deform{index}")
                if self.deformable
                else keras.layers.Conv2D(filters, 3, padding="same", name=f"conv3_{index}")
            )
            conv = keras.layers.Conv2D(filters, 9, padding="same", name=f"conv9_{index}")
            setattr(self, f"conv9_{index}", conv)
            setattr(self, f"local{index}", local)
        self.activation = keras.layers.LeakyReLU(negative_slope=0.2)
        self.pool = keras.layers.MaxPooling2D(2)
        if self.head_kind == "pooled":
            self.conv7a = keras.layers.Conv2D(64, 7, padding="same", name="conv7_1")
            self.conv7b = keras.layers.Conv2D(128, 7, padding="same", name="conv7_2")
            self.global_pool = keras.layers.GlobalAveragePooling2D()
            self.dropout = keras.layers.Dropout(self.dropout_rate)
            self.head = keras.layers.Dense(
                6,
                kernel_initializer=keras.initializers.RandomNormal(stddev=HEAD_INIT_STDDEV),
                # float32 under a mixed policy too: in bfloat16, 1 + delta has steps of
                # 2^-8, 0.4 px at 192 px and 2 px at 1024.
                dtype="float32",
                name="affine_head",
            )
        else:
            # Learnt in the log domain, so that it stays positive; float32 under a mixed
            # policy too (not autocast), as the matching maths runs in float32.
            self.log_sharpness = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(math.log(INITIAL_SHARPNESS)),
                dtype="float32",
                autocast=False,
                name="log_sharpness",
            )
        # Every input's channel count is fixed, so the variables can exist from the start
        # (a checkpoint restores into them before any call).
        self.build()

    @property
    def stages(self) -> list[tuple[keras.layers.Layer, keras.layers.Layer]]:
        """``(conv 9x9, deformable or plain 3x3)`` of each stage."""
        return [
            (getattr(self, f"conv9_{index}"), getattr(self, f"local{index}"))
            for index in range(1, len(STAGE_FILTERS) + 1)
        ]

    def build(self, input_shape=None):
        # The matching head's stages see one image at a time.
        channels = 2 if self.head_kind == "pooled" else 1
        for conv, local in self.stages:
            conv.build((None, None, None, channels))
            local.build((None, None, None, conv.filters))
            channels = conv.filters
        if self.head_kind == "pooled":
            self.conv7a.build((None, None, None, channels))
            self.conv7b.build((None, None, None, 64))
            self.head.build((None, 128))
        self.built = True

    def _features(self, inputs):
        """The three stages: ``(B, H, W, c)`` -> ``(B, H/8, W/8, 64)``."""
        h = inputs
        for conv, local in self.stages:
            h = self.activation(conv(h))
            h = self.activation(local(h))
            h = self.pool(h)
        return h

    def call(self, inputs, training=None):
        if self.head_kind == "matching":
            return self._matching_affine(inputs)
        h = self._features(inputs)
        h = self.activation(self.conv7a(h))
        h = self.activation(self.conv7b(h))
        h = self.dropout(self.global_pool(h), training=training)
        delta = tf.reshape(self.head(h), [-1, 2, 3])
        return tf.constant(IDENTITY_AFFINE, delta.dtype) + delta

    def _matching_affine(self, inputs):
        """The matching head (see the class docstring)."""
        batch = tf.shape(inputs)[0]
        # Both images through the shared stages in one batch.
        both = tf.concat([inputs[..., :1], inputs[..., 1:]], axis=0)
        features = self._features(both)
        moving, fixed = features[:batch], features[batch:]
        stride = 2 ** len(STAGE_FILTERS)
        return affine_from_matches(
            fixed,
            moving,
            tf.exp(self.log_sharpness),
            self.correlation_radius,
            stride,
            tf.shape(inputs)[1:3],
            MATCHING_RIDGE,
        )

    @property
    def random_states(self) -> list:
        """The dropout's random-generator state: not a weight, but a resumed training run
        must restore it to draw the same dropout masks as an uninterrupted one. The
        matching head draws nothing."""
        return [self.dropout.seed_generator.state] if self.head_kind == "pooled" else []

    @property
    def variable_group(self) -> list:
        """Every variable AffineNet's training stage updates."""
        return list(self.weights)

    def get_config(self):
        config = super().get_config()
        config.update(
            deformable=self.deformable,
            dropout=self.dropout_rate,
            head=self.head_kind,
            correlation_radius=self.correlation_radius,
        )
        return config
