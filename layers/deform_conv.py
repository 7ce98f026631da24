"""Deformable convolution (v1, optionally modulated = v2) with torchvision's semantics.

``deform_conv2d`` computes, for output pixel ``(oy, ox)`` and output channel ``o``::

    y[b, oy, ox, o] = bias[o] + sum_{i, j, c} kernel[i, j, c, o]
                      * m[b, oy, ox, k] * x~[b, oy*s - p + i*d + dy_k, ox*s - p + j*d + dx_k, c]

with ``k = i * kw + j`` (taps row-major), ``(dy_k, dx_k) = offset[b, oy, ox, 2k:2k+2]``,
``m`` the optional modulation mask (1 without one) and ``x~`` bilinear sampling in which
a corner outside the image reads zero (so padding ``p`` is symmetric zero padding). At an
integer sample position the derivative with respect to the offset is the one-sided
derivative of the cell ``[floor, floor + 1]``, as in torchvision.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from layers.resampler import resample


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def deform_conv2d(
    x: tf.Tensor,
    offset: tf.Tensor,
    kernel: tf.Tensor,
    bias: tf.Tensor | None = None,
    strides=1,
    padding=0,
    dilation=1,
    mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """Deformable 2-D convolution, ``torchvision.ops.deform_conv2d`` in NHWC.

    Args:
      x: ``(B, H, W, Cin)`` input.
      offset: ``(B, Ho, Wo, 2 * kh * kw)`` sampling offsets in pixels, pairs
        ``(dy, dx)`` per kernel tap, taps in row-major order.
      kernel: ``(kh, kw, Cin, Cout)``; its shape must be static.
      bias: optional ``(Cout,)``.
      strides, padding, dilation: ints or ``(h, w)`` pairs; ``padding`` is symmetric
        zero padding in pixels.
      mask: optional ``(B, Ho, Wo, kh * kw)`` modulation per tap (DCNv2).

    Returns:
      ``(B, Ho, Wo, Cout)`` with ``Ho = (H + 2p - d (kh - 1) - 1) // s + 1`` (same for W).
    """
    kh, kw, cin, cout = kernel.shape
    sh, sw = _pair(strides, "strides")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    taps = kh * kw
    x = tf.convert_to_tensor(x)
    dtype = x.dtype
    shape = tf.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    # Regular sampling grid of every (output pixel, tap): (Ho, K) rows, (Wo, K) cols.
    tap_rows = tf.repeat(tf.range(kh) * dh, kw)
    tap_cols = tf.tile(tf.range(kw) * dw, [kh])
    base_rows = tf.range(out_h)[:, None] * sh - ph + tap_rows[None, :]
    base_cols = tf.range(out_w)[:, None] * sw - pw + tap_cols[None, :]

    offset = tf.reshape(tf.cast(offset, dtype), [batch, out_h, out_w, taps, 2])
    rows = tf.cast(base_rows, dtype)[None, :, None, :] + offset[..., 0]  # (B, Ho, Wo, K)
    cols = tf.cast(base_cols, dtype)[None, None, :, :] + offset[..., 1]
    coords = tf.reshape(tf.stack([rows, cols], axis=-1), [batch, out_h, out_w * taps, 2])

    sampled, _ = resample(x, coords, padding_mode="zeros")  # (B, Ho, Wo * K, Cin)
    sampled = tf.reshape(sampled, [batch, out_h, out_w, taps, cin])
    if mask is not None:
        sampled = sampled * tf.cast(mask, dtype)[..., None]
    columns = tf.reshape(sampled, [-1, taps * cin])
    out = tf.matmul(columns, tf.reshape(tf.cast(kernel, dtype), [taps * cin, cout]))
    if bias is not None:
        out = out + tf.cast(bias, dtype)
    return tf.reshape(out, [batch, out_h, out_w, cout])


@keras.saving.register_keras_serializable(package="rfnet_tf")
class DeformableConv2D(keras.layers.Layer):
    """Deformable convolution that predicts its own offsets (and, if modulated, mask).

    The offset branch is a ``kh x kw`` convolution over the layer's input with the
    same stride, padding and dilation, giving ``2 * kh * kw`` channels of ``(dy, dx)``
    pixel offsets. It is zero-initialised, so a newly built layer is exactly a plain
    convolution. With ``modulated=True`` a mask branch of ``kh * kw`` channels gives
    ``m = 2 * sigmoid(.)``: also zero-initialised, hence ``m = 1`` at the start
    (DCNv2 uses ``sigmoid``, starting at 0.5; the factor 2 keeps the new layer a
    plain convolution). The branch variables are named ``offset_kernel``,
    ``offset_bias``, ``mask_kernel`` and ``mask_bias``.

    Args:
      filters: output channels.
      kernel_size: int or pair.
      strides: int or pair.
      padding: ``"same"`` (symmetric ``d * (k - 1) // 2``, odd kernels only),
        ``"valid"`` or an int / pair of symmetric zero padding.
      dilation_rate: int or pair.
      use_bias: add a bias to the main convolution.
      modulated: predict a modulation mask (DCNv2).

    Input ``(B, H, W, Cin)``, output ``(B, Ho, Wo, filters)``.
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=1,
        padding="same",
        dilation_rate=1,
        use_bias: bool = True,
        modulated: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        self.padding = padding
        self.use_bias = bool(use_bias)
        self.modulated = bool(modulated)
        self._padding_pixels = self._resolve_padding(padding)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            # tf.nn.conv2d (the offset branch) does not support both on the CPU.
            raise ValueError("strides > 1 together with dilation_rate > 1 is not supported")

    def _resolve_padding(self, padding) -> tuple[int, int]:
        if padding == "valid":
            return 0, 0
        if padding == "same":
            pads = []
            for k, d in zip(self.kernel_size, self.dilation_rate):
                if k % 2 == 0:
                    raise ValueError(
                        "padding='same' needs an odd kernel size (symmetric padding); "
                        f"got kernel_size={self.kernel_size}"
                    )
                pads.append(d * (k - 1) // 2)
            return tuple(pads)
        if isinstance(padding, str):
            raise ValueError(f"padding must be 'same', 'valid' or ints, got {padding!r}")
        return _pair(padding, "padding")

    @property
    def num_taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("DeformableConv2D needs a known number of input channels")
        kh, kw = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(kh, kw, channels, self.filters), initializer="glorot_uniform"
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
            if self.use_bias
            else None
        )
        self.offset_kernel = self.add_weight(
            name="offset_kernel", shape=(kh, kw, channels, 2 * self.num_taps), initializer="zeros"
        )
        self.offset_bias = self.add_weight(
            name="offset_bias", shape=(2 * self.num_taps,), initializer="zeros"
        )
        if self.modulated:
            self.mask_kernel = self.add_weight(
                name="mask_kernel", shape=(kh, kw, channels, self.num_taps), initializer="zeros"
            )
            self.mask_bias = self.add_weight(
                name="mask_bias", shape=(self.num_taps,), initializer="zeros"
            )

    def _branch(self, padded, kernel, bias):
        out = tf.nn.conv2d(
            padded, kernel, strides=self.strides, padding="VALID", dilations=self.dilation_rate
        )
        return out + bias

    def call(self, inputs):
        ph, pw = self._padding_pixels
        padded = tf.pad(inputs, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        offset = self._branch(padded, self.offset_kernel, self.offset_bias)
        mask = None
        if self.modulated:
            mask = 2.0 * tf.sigmoid(self._branch(padded, self.mask_kernel, self.mask_bias))
        return deform_conv2d(
            inputs,
            offset,
            self.kernel,
            self.bias,
            strides=self.strides,
            padding=self._padding_pixels,
            dilation=self.dilation_rate,
            mask=mask,
        )

    def compute_output_shape(self, input_shape):
        def out(size, k, s, p, d):
            return None if size is None else (size + 2 * p - d * (k - 1) - 1) // s + 1

        b, h, w, _ = input_shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel_size,
            self.strides,
            self._padding_pixels,
            self.dilation_rate,
        )
        return (b, out(h, kh, sh, ph, dh), out(w, kw, sw, pw, dw), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            use_bias=self.use_bias,
            modulated=self.modulated,
        )
        return config
