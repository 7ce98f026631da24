"""The four training stages of RFNet (paper Sec. 4, ARCHITECTURE section 5).

A stage names the part of ``RFNet`` it trains (its variable group), freezes the rest,
and computes its loss terms from a batch of the matching ``rfnet_tf.data`` pipeline:

* ``transnet``: TransNet on aligned pairs, Eqs. 1-2.
* ``affinenet``: AffineNet with TransNet frozen, on pairs with a synthetic affine
  misalignment, Eqs. 4-5.
* ``fusion``: F2M phase 1, everything but the deformation block, Eqs. 6-8.
* ``deformation``: F2M phase 2, the deformation block only, Eq. 9-10 (Eq. 10 on the
  field in normalised units, ``losses.deformation``).

Batches are dicts (``vis (B, h, w, 3)``, ``nir (B, h, w, 1)``, ``mask (B, h, w, 1)``,
and ``affine (B, 2, 3)`` or ``flow (B, h, w, 2)`` ground truth that is only monitored,
never used by a loss: training is unsupervised; optionally ``translated (B, h, w, 1)``,
TransNet's translation of ``vis`` made by the pipeline).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from layers import affine_grid, warp_affine, warp_flow
from losses import PAPER, deformation_loss, fusion_loss, multiscale_coarse_loss, transnet_loss
from rfnet_tf.colour import luma
from rfnet_tf.conventions import CONTENT_THRESHOLD
from rfnet_tf.networks import RFNet

STAGES = ("transnet", "affinenet", "fusion", "deformation")


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Hyper-parameters of the losses (paper defaults).

    ``ncc_scales`` and ``affine_supervision`` are extensions for short schedules, off by
    default: the AffineNet loss averaged over a dyadic pyramid
    (``losses.multiscale_coarse_loss``), and a supervised term, the mean distance (in
    normalised units) between the predicted and the synthetic ground-truth sampling
    points, which makes the stage no longer unsupervised.
    """

    eta: float = PAPER.eta
    gamma: float = PAPER.gamma
    delta: float = PAPER.delta
    lambda_smooth: float = PAPER.lambda_smooth
    alpha: float = PAPER.alpha
    ncc_scales: int = 1
    affine_supervision: float = 0.0


def warped_mask(mask: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
    """Validity of a warped image: its content mask warped along, times in-image."""
    warp = warp_affine if len(transform.shape) == 3 else warp_flow
    moved, inside = warp(mask, transform)
    return tf.cast(moved >= CONTENT_THRESHOLD, mask.dtype) * inside


class Stage:
    """One training stage over a shared ``RFNet``.

    Args:
      name: one of ``STAGES``.
      model: the RFNet whose parts are trained and frozen.
      weights: loss hyper-parameters.
    """

    def __init__(self, name: str, model: RFNet, weights: LossWeights = LossWeights()):
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are {STAGES}")
        self.name = name
        self.model = model
        self.weights = weights

    @property
    def trained_parts(self) -> tuple[str, ...]:
        """The RFNet parts whose variables this stage changes."""
        return {"transnet": ("transnet",), "affinenet": ("affinenet",)}.get(self.name, ("f2m",))

    @property
    def variables(self) -> list:
        """The variable group this stage updates; everything else stays frozen."""
        if self.name == "transnet":
            return self.model.transnet.variable_group
        if self.name == "affinenet":
            return self.model.affinenet.variable_group
        if self.name == "fusion":
            return self.model.f2m.fusion_variables
        return self.model.f2m.deformation_variables

    def freeze(self) -> None:
        """Marks the frozen parts non-trainable (batch norm then keeps its statistics)."""
        model = self.model
        for network in (model.transnet, model.affinenet, model.f2m):
            network.trainable = False
        if self.name == "transnet":
            model.transnet.trainable = True
        elif self.name == "affinenet":
            model.affinenet.trainable = True
        elif self.name == "fusion":
            model.f2m.trainable = True
            model.f2m.deformation_block.trainable = False
        else:
            model.f2m.deformation_block.trainable = True

    def compute(
        self, batch: dict, training: bool = True, flow: tf.Tensor | None = None
    ) -> tuple[dict, dict]:
        """Loss terms and images of a batch.

        Args:
          batch: see the module docstring.
          training: the networks' training mode.
          flow: F2M stages only: ``(B, h, w, 2)`` ``(dy, dx)`` px replacing the
            deformation block's flow (``F2M(flow=...)``), e.g. the loss along a known
            field; ``None``: the block's own.

        Returns:
          ``(terms, images)``: ``terms["total"]`` is the loss to minimise; the other
          terms are its unweighted parts and monitored errors against the ground truth
          (``registration_error_px``, ``flow_error_px``), all scalars. ``images`` are
          ``(B, h, w, 1)`` lumas for TensorBoard (``registered`` and ``nir`` also make
          the checkerboard).
        """
        if flow is not None and self.trained_parts != ("f2m",):
            raise ValueError(f"the {self.name} stage has no flow to replace")
        vis_luma = luma(batch["vis"])
        nir = batch["nir"]
        mask = batch["mask"]
        weights = self.weights
        if self.name == "transnet":
            out = self.model.transnet([vis_luma, nir], training=training)
            out = {key: tf.cast(value, tf.float32) for key, value in out.items()}
            terms = transnet_loss(
                vis_luma, nir, out["vis_recon"], out["nir_recon"], out["vis_to_nir"],
                out["nir_to_vis"], eta=weights.eta, mask=mask,
            )
            images = {"vis": vis_luma, "nir": nir, "vis_to_nir": out["vis_to_nir"],
                      "nir_to_vis": out["nir_to_vis"]}
            return terms, images

        if self.name == "affinenet":
            # The pipeline may carry the frozen TransNet's translation, made once per pair
            # (``affinenet_dataset(translated=...)``); else it is made here.
            translated = (
                batch["translated"]
                if "translated" in batch
                else tf.cast(self.model.transnet.translate_vis(vis_luma), tf.float32)
            )
            affine = tf.cast(
                self.model.affinenet(tf.concat([translated, nir], axis=-1), training=training),
                tf.float32,
            )
            warped, _ = warp_affine(translated, affine)
            valid = warped_mask(mask, affine)
            ncc_loss = multiscale_coarse_loss(warped, nir, valid, scales=weights.ncc_scales)
            # Where the predicted and the true registration sample the moving crop: the
            # mean distance in pixels is monitored; in normalised units it is the
            # optional supervised term.
            shape = tf.shape(nir)
            predicted = affine_grid(affine, shape[1], shape[2])
            true = affine_grid(tf.cast(batch["affine"], tf.float32), shape[1], shape[2])
            error_px = tf.reduce_mean(tf.norm(predicted - true, axis=-1))
            terms = {"total": ncc_loss, "ncc": ncc_loss, "registration_error_px": error_px}
            if weights.affine_supervision:
                size = tf.cast(tf.reduce_max(shape[1:3]) - 1, tf.float32)
                supervised = error_px * 2.0 / size
                terms["supervised"] = supervised
                terms["total"] = ncc_loss + weights.affine_supervision * supervised
            registered, _ = warp_affine(vis_luma, affine)
            images = {"vis": vis_luma, "nir": nir, "vis_to_nir": translated,
                      "registered": registered}
            return terms, images

        out = self.model.f2m([vis_luma, nir], training=training, flow=flow)
        fused = tf.cast(out["fused"], tf.float32)
        flow = tf.cast(out["flow"], tf.float32)
        if self.name == "fusion":
            terms = fusion_loss(fused, vis_luma, nir, gamma=weights.gamma, delta=weights.delta,
                                mask=mask)
        else:
            valid = warped_mask(mask, flow)
            terms = deformation_loss(fused, nir, flow, lambda_smooth=weights.lambda_smooth,
                                     alpha=weights.alpha, mask=valid)
        error = tf.norm(flow - tf.cast(batch["flow"], tf.float32), axis=-1)
        terms["flow_error_px"] = tf.reduce_mean(error)
        registered = tf.cast(out["registered"], tf.float32)
        images = {"vis": vis_luma, "nir": nir, "fused": fused, "registered": registered}
        return terms, images
