"""Losses of the coarse registration module (paper Sec. 3.1): TransNet and AffineNet.

Images are NHWC, intensities in ``[0, 1]``. ``I_x`` is the moving (visible) image and
``I_y`` the fixed (NIR) image; as everywhere in rfnet-tf the networks see the luma
``Y(I_x)`` of the visible image (ARCHITECTURE section 1), so here "``I_x``" always means
that one-channel luma.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from losses.common import masked_mean, matching_tensors
from losses.weights import PAPER, LossWeights


def ncc(s: tf.Tensor, g: tf.Tensor, mask: tf.Tensor | None = None, eps: float = 1e-5) -> tf.Tensor:
    """Global normalised cross-correlation of each image pair (paper Eq. 5).

    ``NCC = E[(s - mu_s)(g - mu_g)] / (sqrt(E[(s - mu_s)^2] + eps) *
    sqrt(E[(g - mu_g)^2] + eps))``, one value per image. ``E`` is the mean over the
    valid pixels (and all channels) of the image: the means, variances and covariance
    are weighted by ``mask`` and normalised by its sum (ARCHITECTURE section 4,
    decision). ``eps`` under the square roots keeps a constant image finite (NCC 0
    there, with finite gradients); it biases NCC towards 0 by about ``eps / variance``.

    Args:
      s, g: ``(B, H, W, C)`` (in rfnet-tf ``C = 1``), same shape.
      mask: ``(B, H, W, 1)`` in ``{0, 1}`` or ``None`` (all pixels valid).
      eps: added to both variances; ``eps = 0`` gives the textbook NCC (NaN for a
        constant image).

    Returns:
      ``(B,)``, in ``[-1, 1]``; 0 for an image without valid pixels.
    """
    s, g = matching_tensors(s, g)
    axes = [1, 2, 3]
    s_centred = s - masked_mean(s, mask, axis=axes, keepdims=True)
    g_centred = g - masked_mean(g, mask, axis=axes, keepdims=True)
    covariance = masked_mean(s_centred * g_centred, mask, axis=axes)
    variance_s = masked_mean(tf.square(s_centred), mask, axis=axes)
    variance_g = masked_mean(tf.square(g_centred), mask, axis=axes)
    return covariance / (tf.sqrt(variance_s + eps) * tf.sqrt(variance_g + eps))


def coarse_loss(
    translated_warped: tf.Tensor,
    fixed: tf.Tensor,
    mask: tf.Tensor | None = None,
    eps: float = 1e-5,
    overlap_weighted: bool = False,
) -> tf.Tensor:
    """AffineNet loss ``L_coarse = -NCC(I_x->y^C, I_y)`` (paper Eq. 4), batch mean.

    Args:
      translated_warped: ``(B, H, W, 1)``, ``I_x->y^C``: the translated moving image
        warped by the predicted affine.
      fixed: ``(B, H, W, 1)``, ``I_y``.
      mask: ``(B, H, W, 1)`` validity mask of the warp, or ``None``.
      eps: see ``ncc``.
      overlap_weighted: an extension, not the paper's loss: each image's NCC times the
        share of its pixels that ``mask`` marks valid, so that an affine cannot raise the
        masked NCC by moving the image partly out of the frame.

    Returns:
      Scalar in ``[-1, 1]``.
    """
    values = ncc(translated_warped, fixed, mask=mask, eps=eps)
    if overlap_weighted and mask is not None:
        values = values * tf.reduce_mean(tf.cast(mask, values.dtype), axis=[1, 2, 3])
    return -tf.reduce_mean(values)


def multiscale_coarse_loss(
    translated_warped: tf.Tensor,
    fixed: tf.Tensor,
    mask: tf.Tensor | None = None,
    scales: int = 1,
    eps: float = 1e-5,
    overlap_weighted: bool = False,
) -> tf.Tensor:
    """Eq. 4 averaged over a dyadic pyramid: ``mean_s L_coarse(P_s(I_x->y^C), P_s(I_y))``.

    An extension, not the paper's loss (which is ``scales=1``, where this equals
    ``coarse_loss``). ``P_s`` is ``s`` rounds of 2x2 average pooling; the mask is
    min-pooled, so a coarse pixel counts only if all its fine pixels are valid. Coarse
    scales see structure that is many pixels apart, so the loss still points towards
    the alignment when the misalignment exceeds the fine image's correlation length,
    where the full-resolution NCC is flat.

    Args:
      translated_warped, fixed, mask, eps, overlap_weighted: as in ``coarse_loss``; H, W
        at least ``2 ** (scales - 1)``.
      scales: pyramid levels (>= 1).

    Returns:
      Scalar in ``[-1, 1]``.
    """
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    losses = []
    for level in range(scales):
        if level:
            translated_warped = tf.nn.avg_pool2d(translated_warped, 2, 2, "VALID")
            fixed = tf.nn.avg_pool2d(fixed, 2, 2, "VALID")
            if mask is not None:
                mask = -tf.nn.max_pool2d(-mask, 2, 2, "VALID")
        losses.append(coarse_loss(translated_warped, fixed, mask, eps, overlap_weighted))
    return tf.add_n(losses) / scales


def transnet_loss(
    vis: tf.Tensor,
    nir: tf.Tensor,
    vis_recon: tf.Tensor,
    nir_recon: tf.Tensor,
    vis_to_nir: tf.Tensor,
    nir_to_vis: tf.Tensor,
    weights: LossWeights = PAPER,
    mask: tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
    """TransNet loss ``L_recon + eta * L_trans`` (paper Eqs. 1-2).

    ``L_recon = mean|I_x - I_x^recon| + mean|I_y - I_y^recon|`` and
    ``L_trans = mean|I_x - I_y->x| + mean|I_y - I_x->y|``: the paper's L1 norms as
    means over pixels and batch (ARCHITECTURE section 4), so ``eta`` keeps its meaning
    at any image size.

    Args:
      vis: ``(B, H, W, 1)``, ``I_x`` = the luma ``Y`` of the visible image (the
        networks see luma, so ``D_x`` reconstructs luma).
      nir: ``(B, H, W, 1)``, ``I_y``.
      vis_recon: ``D_x(E_x(I_x))``; nir_recon: ``D_y(E_y(I_y))``.
      vis_to_nir: ``I_x->y = D_y(E_x(I_x))``, compared with ``nir``.
      nir_to_vis: ``I_y->x = D_x(E_y(I_y))``, compared with ``vis``.
      weights: the loss weights; this loss reads ``weights.eta``, the weight of the
        translation term (paper: 2).
      mask: ``(B, H, W, 1)`` valid pixels, or ``None``; every term is a masked mean.

    Returns:
      ``{"total", "recon", "trans"}`` scalars, ``total = recon + weights.eta * trans``;
      for images in ``[0, 1]``, ``recon`` and ``trans`` lie in ``[0, 2]``.
    """
    recon = _mean_abs_error(vis, vis_recon, mask) + _mean_abs_error(nir, nir_recon, mask)
    trans = _mean_abs_error(vis, nir_to_vis, mask) + _mean_abs_error(nir, vis_to_nir, mask)
    return {"total": recon + weights.eta * trans, "recon": recon, "trans": trans}


def _mean_abs_error(target: tf.Tensor, prediction: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
    """Masked mean of ``|target - prediction|`` over the batch (shapes must match)."""
    prediction, target = matching_tensors(prediction, target)
    return masked_mean(tf.abs(target - prediction), mask)


@keras.saving.register_keras_serializable(package="rfnet_tf")
class NCCLoss(keras.losses.Loss):
    """``-NCC(y_pred, y_true)`` per image (paper Eqs. 4-5), as a Keras loss.

    ``y_true`` is the fixed image ``I_y``, ``y_pred`` the warped translated moving image
    ``I_x->y^C``, both ``(B, H, W, 1)``. ``call`` returns ``(B,)``; the default
    reduction averages over the batch, matching ``coarse_loss`` without a mask. A Keras
    loss takes no validity mask: use ``coarse_loss`` for the masked version.

    Args:
      eps: see ``ncc``.
      name, reduction: as ``keras.losses.Loss``.
    """

    def __init__(
        self,
        eps: float = 1e-5,
        name: str = "ncc_loss",
        reduction: str = "sum_over_batch_size",
    ):
        super().__init__(name=name, reduction=reduction)
        self.eps = eps

    def call(self, y_true, y_pred):
        return -ncc(y_pred, y_true, eps=self.eps)

    def get_config(self):
        return {"eps": self.eps, "name": self.name, "reduction": self.reduction}
