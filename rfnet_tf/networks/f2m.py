"""F2M: fine registration and fusion module (paper Sec. 3.2, Fig. 5; ARCHITECTURE section 3)."""

from __future__ import annotations

import keras
import tensorflow as tf

from layers import GradientChannelAttention, ResidualBlock, warp_flow
from layers.config import ConfigFromArguments
from rfnet_tf.networks.correlation_flow import CorrelationBlock
from rfnet_tf.networks.padding import crop_to, pad_to_multiple

# Two max-pools in the deformation U-Net; 8 leaves room for one more level.
PAD_MULTIPLE = 8
# The smallest height and width F2M accepts: reflect padding needs a side longer than the
# padding it gets, (-side) % PAD_MULTIPLE, which holds from PAD_MULTIPLE // 2 + 1 on
# (sides of 1-4 px fail at 8).
MIN_IMAGE_SIZE = PAD_MULTIPLE // 2 + 1
# F2M's deformation blocks: the paper's U-Net (the default) and the correlation block of
# rfnet_tf.networks.correlation_flow (an option, ARCHITECTURE section 7).
DEFORMATION_BLOCKS = ("unet", "correlation")


def _conv(filters: int, name: str, **kwargs) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, 3, padding="same", name=name, **kwargs)


def jitter_flows(jitter: tf.Tensor, like: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The two constant flows ``(B, H, W, 2)`` (shaped as ``like``) of a jitter
    ``(B, 2, 2)``: rows ``u`` (VIS) and ``v`` (NIR) at every pixel (``F2M(jitter=...)``)."""
    vis_offset, nir_offset = tf.unstack(tf.cast(jitter, like.dtype), axis=1)
    zeros = tf.zeros_like(like)
    return zeros + vis_offset[:, None, None, :], zeros + nir_offset[:, None, None, :]


@keras.saving.register_keras_serializable(package="rfnet_tf")
class UNetLevel(ConfigFromArguments, keras.layers.Layer):
    """conv 3x3 (32) + batch norm + LeakyReLU(0.2) + residual block; size preserved."""

    CONFIG_ARGUMENTS = ("filters",)

    def __init__(self, filters: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        # No bias: batch norm's offset replaces it.
        self.conv = _conv(self.filters, "conv", use_bias=False)
        self.norm = keras.layers.BatchNormalization(name="batch_norm")
        self.activation = keras.layers.LeakyReLU(negative_slope=0.2)
        self.residual = ResidualBlock(self.filters, norm="none", pad_mode="zeros", name="residual")

    def build(self, input_shape):
        self.conv.build(input_shape)
        out_shape = tuple(input_shape[:-1]) + (self.filters,)
        self.norm.build(out_shape)
        self.residual.build(out_shape)

    def call(self, inputs, training=None):
        h = self.activation(self.norm(self.conv(inputs), training=training))
        return self.residual(h)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)


@keras.saving.register_keras_serializable(package="rfnet_tf")
class DeformationBlock(ConfigFromArguments, keras.layers.Layer):
    """3-level U-Net from shallow features to a bounded dense flow.

    Input ``concat(F_x1, F_y1)`` ``(B, H, W, 32)`` with H, W multiples of 4; output
    ``(B, H, W, 2)`` = ``(dy, dx)`` pixels, ``max_displacement * tanh(head)``. The head
    convolution is zero-initialised, so the flow is exactly 0 until phase 2 trains it.
    Nearest upsampling and skip concatenation on the way up.
    """

    CONFIG_ARGUMENTS = ("max_displacement", "filters")

    def __init__(self, max_displacement: float = 16.0, filters: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.max_displacement = float(max_displacement)
        self.filters = int(filters)
        # One attribute per level: tf.train.Checkpoint does not follow layers held in
        # Python lists of a Keras 3 layer.
        self.down1 = UNetLevel(self.filters, name="down1")
        self.down2 = UNetLevel(self.filters, name="down2")
        self.down3 = UNetLevel(self.filters, name="down3")
        self.up2 = UNetLevel(self.filters, name="up2")
        self.up1 = UNetLevel(self.filters, name="up1")
        self.pool = keras.layers.MaxPooling2D(2)
        self.upsample = keras.layers.UpSampling2D(2, interpolation="nearest")
        self.head = _conv(2, "flow_head", kernel_initializer="zeros", bias_initializer="zeros")

    @property
    def down_levels(self) -> list[UNetLevel]:
        return [self.down1, self.down2, self.down3]

    @property
    def up_levels(self) -> list[UNetLevel]:
        return [self.up2, self.up1]

    def build(self, input_shape):
        features = (None, None, None, self.filters)
        self.down_levels[0].build(input_shape)
        for level in self.down_levels[1:]:
            level.build(features)
        for level in self.up_levels:
            level.build((None, None, None, 2 * self.filters))
        self.head.build(features)

    def call(self, inputs, training=None):
        skips = []
        h = inputs
        for index, level in enumerate(self.down_levels):
            if index:
                h = self.pool(h)
            h = level(h, training=training)
            skips.append(h)
        for level, skip in zip(self.up_levels, reversed(skips[:-1])):
            h = level(tf.concat([self.upsample(h), skip], axis=-1), training=training)
        return self.max_displacement * tf.tanh(self.head(h))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2,)


@keras.saving.register_keras_serializable(package="rfnet_tf")
class F2M(ConfigFromArguments, keras.Model):
    """Fine registration and fusion of a coarse-aligned pair.

    1. A shared conv 3x3 -> 16 + LeakyReLU(0.2) gives ``F_x1, F_y1`` (same weights).
    2. The deformation block maps ``concat(F_x1, F_y1)`` to ``phi_f`` (pixels, bounded by
       ``max_displacement``).
    3. ``F_x1`` is warped by ``phi_f`` (border padding, so that no black edge enters the
       fused image; validity is reported through ``mask``).
    4. Shared conv 3x3 -> 32 and conv 3x3 -> 32 (LeakyReLU) on both branches (with step 1,
       the paper's three shared layers).
    5. Gradient channel attention on the two 32-channel maps; the attended maps are
       concatenated; conv 3x3 -> 32, -> 16 (LeakyReLU), -> 1 with sigmoid: ``I_f``.

    Inputs are reflect-padded to a multiple of 8 and cropped back, so any size of at least
    ``MIN_IMAGE_SIZE`` (5) pixels a side works.

    Args:
      max_displacement: bound of the flow in pixels.
      attention_reduction: channel reduction of the attention MLPs.
      attention_window: the attention's ``max_pool_window`` (``None``: the global max of
        the paper). Set it to the training crop size, so that an image larger than the
        crops gets the attention statistics of the crops it was trained on.
      deformation_block_type: ``"unet"`` (the paper's :class:`DeformationBlock`) or
        ``"correlation"`` (:class:`~rfnet_tf.networks.correlation_flow.CorrelationBlock`,
        which compares the two images' descriptors explicitly; an option). The U-Net
        takes the first shared convolution's features of both images, the correlation
        block the two images.

    Called on ``[vis_luma, nir]`` (the coarse-aligned VIS luma ``Y(I_x^C)`` and ``I_y``,
    both ``(B, H, W, 1)`` in ``[0, 1]``); returns a dict: ``fused`` ``(B, H, W, 1)``,
    ``flow`` ``(B, H, W, 2)`` (``(dy, dx)`` px; ``registered[p] = I_x^C[p + flow[p]]``),
    ``registered`` (the VIS luma warped by the flow) and ``mask`` ``(B, H, W, 1)`` (1
    where the flow samples inside the image).

    ``flow=`` (``(B, H, W, 2)`` ``(dy, dx)`` px) replaces the deformation block's flow by
    a given one, which is then returned as ``flow``: the fusion of the pair registered
    by that field, e.g. to evaluate Eq. 9 along a known field. Where the input is padded
    to a multiple of 8, the given flow is reflect-padded like the images.

    ``jitter=`` (``(B, 2, 2)``, rows ``u`` and ``v`` as ``(dy, dx)`` px) samples the VIS
    features at ``p + flow(p) + u`` and the NIR features at ``p + v`` (the block still
    sees the unshifted features, and ``flow``, ``registered`` and ``mask`` leave the
    jitter out). With ``u, v ~ U(-0.5, 0.5)`` the blur of bilinear resampling no
    longer depends on the flow on average; the deformation phase trains so, because
    Eq. 9 otherwise rewards the blur (ARCHITECTURE section 7). The loss then compares
    ``fused`` with the NIR sampled at ``p + v``.
    """

    CONFIG_ARGUMENTS = (
        "max_displacement", "attention_reduction", "attention_window", "deformation_block_type",
    )

    def __init__(
        self,
        max_displacement: float = 16.0,
        attention_reduction: int = 8,
        attention_window: int | None = None,
        deformation_block_type: str = "unet",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.max_displacement = float(max_displacement)
        self.attention_reduction = int(attention_reduction)
        self.attention_window = None if attention_window is None else int(attention_window)
        activation = keras.layers.LeakyReLU(negative_slope=0.2)
        self.activation = activation
        self.shared_conv1 = _conv(16, "shared_conv1")
        self.shared_conv2 = _conv(32, "shared_conv2")
        self.shared_conv3 = _conv(32, "shared_conv3")
        if deformation_block_type not in DEFORMATION_BLOCKS:
            raise ValueError(
                f"deformation_block_type must be one of {DEFORMATION_BLOCKS}, "
                f"got {deformation_block_type!r}"
            )
        self.deformation_block_type = deformation_block_type
        block = DeformationBlock if deformation_block_type == "unet" else CorrelationBlock
        self.deformation_block = block(self.max_displacement, name="deformation_block")
        self.attention = GradientChannelAttention(
            self.attention_reduction, self.attention_window, name="attention"
        )
        self.fuse_conv1 = _conv(32, "fuse_conv1")
        self.fuse_conv2 = _conv(16, "fuse_conv2")
        self.fuse_out = _conv(1, "fuse_out")
        # Every input's channel count is fixed, so the variables can exist from the start
        # (a checkpoint restores into them before any call).
        self.build()

    def build(self, input_shape=None):
        self.shared_conv1.build((None, None, None, 1))
        block_channels = 32 if self.deformation_block_type == "unet" else 2
        self.deformation_block.build((None, None, None, block_channels))
        self.shared_conv2.build((None, None, None, 16))
        self.shared_conv3.build((None, None, None, 32))
        self.attention.build([(None, None, None, 32), (None, None, None, 32)])
        self.fuse_conv1.build((None, None, None, 64))
        self.fuse_conv2.build((None, None, None, 32))
        self.fuse_out.build((None, None, None, 16))
        # Fixed at build time: freezing a part (layer.trainable = False) later removes
        # its variables from trainable_weights, but not from its group.
        self._deformation_variables = list(self.deformation_block.trainable_weights)
        deformation_ids = {id(v) for v in self._deformation_variables}
        self._fusion_variables = [
            v for v in self.trainable_weights if id(v) not in deformation_ids
        ]
        self.built = True

    @property
    def deformation_variables(self) -> list:
        """The deformation block's trainable variables (phase 2)."""
        return list(self._deformation_variables)

    @property
    def fusion_variables(self) -> list:
        """Every other trainable variable of F2M (phase 1)."""
        return list(self._fusion_variables)

    def _shared_features(self, image: tf.Tensor) -> tf.Tensor:
        return self.activation(self.shared_conv1(image))

    def _shared_deep_features(self, features: tf.Tensor) -> tf.Tensor:
        return self.activation(self.shared_conv3(self.activation(self.shared_conv2(features))))

    def predict_flow(self, inputs, training=None) -> tf.Tensor:
        """The deformation block's flow alone, ``(B, H, W, 2)`` ``(dy, dx)`` px, for
        ``inputs`` as :meth:`call` takes them: what :meth:`call` returns as ``flow``
        without a given one (the fusion layers are not run)."""
        shape = tf.shape(inputs[0])
        images = self._padded(inputs)
        flow = self._block_flow(images, self._shared_features_of(images), training)
        return crop_to(flow, shape[1], shape[2])

    @staticmethod
    def _padded(inputs) -> tuple[tf.Tensor, tf.Tensor]:
        """Both inputs reflect-padded to a multiple of ``PAD_MULTIPLE``."""
        return tuple(pad_to_multiple(image, PAD_MULTIPLE) for image in inputs)

    def _shared_features_of(self, images) -> tuple[tf.Tensor, tf.Tensor]:
        """The first shared convolution's features of both (padded) images."""
        return tuple(self._shared_features(image) for image in images)

    def _block_flow(self, images, features, training) -> tf.Tensor:
        # The paper's block reads the first shared convolution's features. The
        # correlation block reads the images and learns its own descriptors: on the
        # frozen fusion features it hardly learnt (weights/README.md, F2M item 12).
        source = features if self.deformation_block_type == "unet" else images
        return self.deformation_block(tf.concat(source, axis=-1), training=training)

    def call(self, inputs, training=None, flow=None, jitter=None):
        vis_luma, _ = inputs
        shape = tf.shape(vis_luma)
        images = self._padded(inputs)
        features_vis, features_nir = self._shared_features_of(images)
        if flow is None:
            flow = self._block_flow(images, (features_vis, features_nir), training)
        else:
            flow = pad_to_multiple(tf.cast(flow, features_vis.dtype), PAD_MULTIPLE)
        sampling_flow = flow
        if jitter is not None:
            vis_offset, nir_offset = jitter_flows(jitter, flow)
            sampling_flow = flow + vis_offset
            features_nir, _ = warp_flow(features_nir, nir_offset, padding_mode="border")
        features_vis, _ = warp_flow(features_vis, sampling_flow, padding_mode="border")

        deep_vis, deep_nir = self.attention(
            [self._shared_deep_features(features_vis), self._shared_deep_features(features_nir)]
        )
        h = self.activation(self.fuse_conv1(tf.concat([deep_vis, deep_nir], axis=-1)))
        h = self.activation(self.fuse_conv2(h))
        fused = tf.sigmoid(self.fuse_out(h))

        height, width = shape[1], shape[2]
        flow = crop_to(flow, height, width)
        registered, mask = warp_flow(vis_luma, flow, padding_mode="border")
        return {
            "fused": crop_to(fused, height, width),
            "flow": flow,
            "registered": registered,
            "mask": mask,
        }
