"""TransNet: VIS <-> NIR image translation (paper Sec. 3.1.1, ARCHITECTURE section 3)."""

from __future__ import annotations

import keras
import tensorflow as tf

from layers import PaddedConv2D, ResidualBlock, make_norm
from layers.config import ConfigFromArguments
from rfnet_tf.networks.padding import crop_to, pad_to_multiple

# Two stride-2 convolutions in the encoders.
DOWNSAMPLING = 4


@keras.saving.register_keras_serializable(package="rfnet_tf")
class ConvNormAct(ConfigFromArguments, keras.layers.Layer):
    """Reflect-padded convolution, instance norm (learned affine), LeakyReLU(0.2).

    The convolution has no bias: the norm's learned offset makes one redundant, and a
    redundant parameter only collects round-off as its gradient.
    """

    CONFIG_ARGUMENTS = ("filters", "kernel_size", "strides")

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.conv = PaddedConv2D(filters, kernel_size, strides=strides, use_bias=False, name="conv")
        self.norm = make_norm("instance", "norm")
        self.activation = keras.layers.LeakyReLU(negative_slope=0.2)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.norm.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs):
        return self.activation(self.norm(self.conv(inputs)))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)


def _encoder(name: str) -> keras.Sequential:
    """``E_m`` without the shared tail: (B, H, W, 1) -> (B, H/4, W/4, 128)."""
    return keras.Sequential(
        [
            ConvNormAct(32, 7, name="conv7"),
            ConvNormAct(64, 4, strides=2, name="down1"),
            ConvNormAct(128, 4, strides=2, name="down2"),
            ResidualBlock(128, name="res1"),
            ResidualBlock(128, name="res2"),
        ],
        name=name,
    )


def _decoder(name: str) -> keras.Sequential:
    """``D_m`` without the shared head: (B, H/4, W/4, 128) -> (B, H, W, 1) in (0, 1)."""
    return keras.Sequential(
        [
            ResidualBlock(128, name="res1"),
            ResidualBlock(128, name="res2"),
            keras.layers.UpSampling2D(2, name="up1"),
            ConvNormAct(64, 3, name="conv_up1"),
            keras.layers.UpSampling2D(2, name="up2"),
            ConvNormAct(32, 3, name="conv_up2"),
            PaddedConv2D(1, 7, name="conv_out"),
            keras.layers.Activation("sigmoid", name="sigmoid"),
        ],
        name=name,
    )


@keras.saving.register_keras_serializable(package="rfnet_tf")
class TransNet(keras.Model):
    """Translation between the VIS luma and NIR domains through a shared content space.

    Two encoders ``E_x, E_y`` whose last residual block is one shared layer, and two
    decoders ``D_x, D_y`` whose first residual block is one shared layer (the paper's
    weight sharing); reflect padding, instance norm, LeakyReLU(0.2), no skip
    connections (they would leak domain information).

    Called on ``[vis_luma, nir]``, both ``(B, H, W, 1)`` in ``[0, 1]`` of any size
    (internally reflect-padded to a multiple of 4 and cropped back); returns a dict of
    ``(B, H, W, 1)`` images: ``vis_to_nir = D_y(E_x(I_x))``, ``vis_recon = D_x(E_x(I_x))``,
    ``nir_to_vis = D_x(E_y(I_y))``, ``nir_recon = D_y(E_y(I_y))``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.encoder_vis = _encoder("encoder_vis")
        self.encoder_nir = _encoder("encoder_nir")
        self.shared_encoder_tail = ResidualBlock(128, name="shared_encoder_tail")
        self.shared_decoder_head = ResidualBlock(128, name="shared_decoder_head")
        self.decoder_vis = _decoder("decoder_vis")
        self.decoder_nir = _decoder("decoder_nir")
        # Every input's channel count is fixed, so the variables can exist from the start
        # (a checkpoint restores into them before any call).
        self.build()

    def build(self, input_shape=None):
        image = (None, None, None, 1)
        content = (None, None, None, 128)
        for encoder in (self.encoder_vis, self.encoder_nir):
            encoder.build(image)
        for block in (self.shared_encoder_tail, self.shared_decoder_head):
            block.build(content)
        for decoder in (self.decoder_vis, self.decoder_nir):
            decoder.build(content)
        self.built = True

    def encode(self, image: tf.Tensor, domain: str) -> tf.Tensor:
        """``(B, H, W, 1)`` with H, W multiples of 4 -> content ``(B, H/4, W/4, 128)``."""
        encoder = self.encoder_vis if domain == "vis" else self.encoder_nir
        return self.shared_encoder_tail(encoder(image))

    def decode(self, content: tf.Tensor, domain: str) -> tf.Tensor:
        """Content ``(B, h, w, 128)`` -> image ``(B, 4h, 4w, 1)`` of ``domain``."""
        decoder = self.decoder_vis if domain == "vis" else self.decoder_nir
        return decoder(self.shared_decoder_head(content))

    def translate_vis(self, vis_luma: tf.Tensor) -> tf.Tensor:
        """``I_x->y``: VIS luma ``(B, H, W, 1)`` rendered in the NIR domain, same size;
        float32 under any dtype policy, as the images it is warped and compared with."""
        shape = tf.shape(vis_luma)
        padded = pad_to_multiple(vis_luma, DOWNSAMPLING)
        translated = self.decode(self.encode(padded, "vis"), "nir")
        return tf.cast(crop_to(translated, shape[1], shape[2]), tf.float32)

    def call(self, inputs, training=None):
        vis_luma, nir = inputs
        shape = tf.shape(vis_luma)
        content_vis = self.encode(pad_to_multiple(vis_luma, DOWNSAMPLING), "vis")
        content_nir = self.encode(pad_to_multiple(nir, DOWNSAMPLING), "nir")
        outputs = {
            "vis_to_nir": self.decode(content_vis, "nir"),
            "vis_recon": self.decode(content_vis, "vis"),
            "nir_to_vis": self.decode(content_nir, "vis"),
            "nir_recon": self.decode(content_nir, "nir"),
        }
        return {key: crop_to(value, shape[1], shape[2]) for key, value in outputs.items()}

    @property
    def variable_group(self) -> list:
        """Every variable TransNet's training stage updates."""
        return list(self.weights)
