"""Custom Keras layers of rfnet-tf: resampler, deformable convolution, attention, blocks.

Pure functions hold the maths; the layers are thin wrappers. Conventions: NHWC
``float32``; pixel coordinates ``(y, x)``; flows ``(B, H, W, 2)`` as ``(dy, dx)``
pixels, warping backward; affines ``(B, 2, 3)`` in the normalised align-corners
convention (see ``layers.resampler``).
"""

from layers.attention import GradientChannelAttention, windowed_max
from layers.blocks import PaddedConv2D, ResidualBlock, make_norm
from layers.deform_conv import DeformableConv2D, deform_conv2d
from layers.gradients import laplacian
from layers.resampler import (
    SpatialTransformer,
    affine_grid,
    identity_grid,
    normalised_flow,
    resample,
    warp_affine,
    warp_flow,
)

__all__ = [
    "DeformableConv2D",
    "GradientChannelAttention",
    "PaddedConv2D",
    "ResidualBlock",
    "SpatialTransformer",
    "affine_grid",
    "deform_conv2d",
    "identity_grid",
    "laplacian",
    "make_norm",
    "normalised_flow",
    "resample",
    "warp_affine",
    "warp_flow",
    "windowed_max",
]
