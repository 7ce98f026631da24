"""Loss functions of RFNet (paper Eqs. 1-10, ARCHITECTURE section 4).

Images are NHWC with intensities in ``[0, 1]``; the networks see the luma of the
visible image, so every image here has one channel. Flows are ``(B, H, W, 2)`` as
``(dy, dx)`` pixels. An optional validity mask ``(B, H, W, 1)`` (the valid region of a
warped image) restricts every mean to the valid pixels (``losses.common``). Composite
losses return a dict of scalars, ``"total"`` plus each unweighted term, for logging.
"""

from losses.common import laplacian_valid_mask, masked_mean, matching_tensors
from losses.deformation import bilateral_smoothness, deformation_loss
from losses.fusion import content_loss, fusion_loss, gradient_loss, gradient_target, image_gradient
from losses.registration import NCCLoss, coarse_loss, multiscale_coarse_loss, ncc, transnet_loss
from losses.similarity import feature_ncc, fully_valid, gradient_magnitude, gradient_ncc
from losses.weights import PAPER, LossWeights

__all__ = [
    "LossWeights",
    "NCCLoss",
    "PAPER",
    "bilateral_smoothness",
    "coarse_loss",
    "content_loss",
    "feature_ncc",
    "deformation_loss",
    "fully_valid",
    "fusion_loss",
    "gradient_loss",
    "gradient_magnitude",
    "gradient_ncc",
    "gradient_target",
    "image_gradient",
    "laplacian_valid_mask",
    "masked_mean",
    "matching_tensors",
    "multiscale_coarse_loss",
    "ncc",
    "transnet_loss",
]
