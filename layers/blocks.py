"""Small building blocks of the RFNet networks: padded convolutions and residual blocks."""

from __future__ import annotations

import keras
import tensorflow as tf

from layers.config import ConfigFromArguments

PAD_MODES = ("reflect", "zeros")
NORMS = ("instance", "batch", "none")


def make_norm(norm: str, name: str) -> keras.layers.Layer | None:
    """Instance norm (``GroupNormalization(groups=-1)``, learned affine), batch norm or none."""
    if norm == "instance":
        return keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)
    if norm == "batch":
        return keras.layers.BatchNormalization(name=name)
    if norm == "none":
        return None
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


@keras.saving.register_keras_serializable(package="rfnet_tf")
class PaddedConv2D(ConfigFromArguments, keras.layers.Layer):
    """Convolution with explicit reflect or zero "same" padding.

    ``k - s`` pixels are padded in total (the extra one after, for an even total), so a
    size divisible by the stride ``s`` maps to ``H / s``: a 7x7 or 3x3 stride-1
    convolution keeps the size, a 4x4 stride-2 one halves it. Input ``(B, H, W, Cin)``,
    output ``(B, H / s, W / s, filters)``.
    """

    CONFIG_ARGUMENTS = (
        "filters", "kernel_size", "strides", "pad_mode", "kernel_initializer", "use_bias"
    )

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        strides: int = 1,
        pad_mode: str = "reflect",
        kernel_initializer="glorot_uniform",
        use_bias: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.pad_mode = pad_mode
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.use_bias = bool(use_bias)
        self.conv = keras.layers.Conv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding="valid",
            kernel_initializer=self.kernel_initializer,
            use_bias=self.use_bias,
            name="conv",
        )

    def build(self, input_shape):
        # The convolution sees the padded input, whose size the unpadded shape does not
        # give; only the channels matter for its variables.
        self.conv.build((None, None, None, input_shape[-1]))

    def call(self, inputs):
        # "same" padding for sizes divisible by the stride: k - s pixels in total.
        total = max(self.kernel_size - self.strides, 0)
        before, after = total // 2, total - total // 2
        paddings = [[0, 0], [before, after], [before, after], [0, 0]]
        mode = "REFLECT" if self.pad_mode == "reflect" else "CONSTANT"
        return self.conv(tf.pad(inputs, paddings, mode=mode))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        scale = lambda s: None if s is None else (s + self.strides - 1) // self.strides
        return (b, scale(h), scale(w), self.filters)



@keras.saving.register_keras_serializable(package="rfnet_tf")
class ResidualBlock(ConfigFromArguments, keras.layers.Layer):
    """``x + norm(conv(act(norm(conv(x)))))`` with two 3x3 padded convolutions.

    The convolutions carry a bias only without a norm (a norm's offset replaces it).

    Args:
      filters: channels; the input must have as many.
      norm: ``"instance"``, ``"batch"`` or ``"none"``.
      pad_mode: ``"reflect"`` or ``"zeros"``.
      negative_slope: of the LeakyReLU between the convolutions.

    Input and output ``(B, H, W, filters)``.
    """

    CONFIG_ARGUMENTS = ("filters", "norm", "pad_mode", "negative_slope")

    def __init__(
        self,
        filters: int,
        norm: str = "instance",
        pad_mode: str = "reflect",
        negative_slope: float = 0.2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.norm = norm
        self.pad_mode = pad_mode
        self.negative_slope = float(negative_slope)
        # A bias before a normalisation is redundant (the norm's offset replaces it).
        use_bias = norm == "none"
        self.conv1 = PaddedConv2D(self.filters, 3, pad_mode=pad_mode, use_bias=use_bias, name="conv1")
        self.conv2 = PaddedConv2D(self.filters, 3, pad_mode=pad_mode, use_bias=use_bias, name="conv2")
        self.norm1 = make_norm(norm, "norm1")
        self.norm2 = make_norm(norm, "norm2")
        self.activation = keras.layers.LeakyReLU(negative_slope=self.negative_slope)

    def build(self, input_shape):
        shape = tuple(input_shape)
        if shape[-1] != self.filters:
            raise ValueError(f"ResidualBlock({self.filters}) got {shape[-1]} input channels")
        for layer in (self.conv1, self.norm1, self.conv2, self.norm2):
            if layer is not None:
                layer.build(shape)

    def call(self, inputs, training=None):
        h = self.conv1(inputs)
        if self.norm1 is not None:
            h = self.norm1(h, training=training)
        h = self.activation(h)
        h = self.conv2(h)
        if self.norm2 is not None:
            h = self.norm2(h, training=training)
        return inputs + h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)
