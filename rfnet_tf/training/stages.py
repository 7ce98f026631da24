"""The four training stages of RFNet (paper Sec. 4, ARCHITECTURE section 5).

A stage names the part of ``RFNet`` it trains (its variable group), freezes the rest,
and computes its loss terms from a batch of the matching ``rfnet_tf.data`` pipeline
(:attr:`TrainingStage.dataset`). Each is one class, registered by name in
:data:`STAGES`; :func:`Stage` makes one by name:

* ``transnet``: TransNet on aligned pairs, Eqs. 1-2.
* ``affinenet``: AffineNet with TransNet frozen, on pairs with a synthetic affine
  misalignment, Eqs. 4-5 (settings: :class:`AffineSettings`).
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
from typing import ClassVar

import tensorflow as tf

from layers import affine_grid, warp_affine, warp_flow
from losses import (
    LossWeights,
    deformation_loss,
    fusion_loss,
    multiscale_coarse_loss,
    transnet_loss,
)
from rfnet_tf.colour import luma
from rfnet_tf.conventions import CONTENT_THRESHOLD
from rfnet_tf.data import affinenet_dataset, f2m_dataset, transnet_dataset
from rfnet_tf.networks import RFNet
from rfnet_tf.networks.f2m import jitter_flows
from rfnet_tf.training.batch_norm import batch_norm_layers, recompute_batch_norm_statistics

__all__ = [
    "AffineSettings", "DeformationSettings", "LossWeights", "STAGES", "Stage", "TrainingStage",
    "warped_mask",
]


def warped_mask(mask: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
    """Validity of a warped image: its content mask warped along, times in-image."""
    warp = warp_affine if len(transform.shape) == 3 else warp_flow
    moved, inside = warp(mask, transform)
    return tf.cast(moved >= CONTENT_THRESHOLD, mask.dtype) * inside


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """A stage without settings of its own."""


@dataclasses.dataclass(frozen=True)
class AffineSettings:
    """The AffineNet stage's extensions for short schedules, off by default.

    Attributes:
      ncc_scales: the loss averaged over this many dyadic scales
        (``losses.multiscale_coarse_loss``; 1: the paper's Eq. 4).
      affine_supervision: weight of a supervised term, the mean distance (in normalised
        units) between the predicted and the synthetic ground-truth sampling points,
        which makes the stage no longer unsupervised (0: off).
      overlap_weighted_ncc: each image's NCC times its overlap with the frame
        (``losses.coarse_loss``); off: the paper's Eq. 4.
    """

    ncc_scales: int = 1
    affine_supervision: float = 0.0
    overlap_weighted_ncc: bool = False


@dataclasses.dataclass(frozen=True)
class DeformationSettings:
    """The deformation phase's settings.

    Attributes:
      subpixel_jitter: F2M samples the two branches' features at the batch's random
        sub-pixel offsets (``batch["jitter"]``, ``F2M(jitter=...)``), and Eq. 9 compares
        the fused image with the NIR sampled at the NIR's offset. On (the default), the
        blur of bilinear resampling no longer lowers Eq. 9 along any flow on average;
        off, Eq. 9 is lowest at a constant half-pixel flow (ARCHITECTURE section 7).
      flow_supervision: weight of a supervised term, the mean end-point error in pixels
        of the flow against the synthetic ground truth, which makes the phase no longer
        unsupervised (0: off, the paper).
      supervised_only: the total is the supervised term alone; Eq. 9's terms are still
        computed and logged. An ablation of what the block learns when told the truth
        and nothing else (Eq. 9's gradient pulls the flow elsewhere, weights/README.md
        F2M item 4); needs ``flow_supervision > 0``.
      batch_norm_batches: training batches over which the deformation block's batch-norm
        statistics are recomputed with the current weights before each validation and
        the export (``rfnet_tf.training.batch_norm``; 0: keep the moving averages).
    """

    subpixel_jitter: bool = True
    flow_supervision: float = 0.0
    batch_norm_batches: int = 32
    supervised_only: bool = False

    def __post_init__(self):
        if self.supervised_only and self.flow_supervision <= 0:
            raise ValueError("supervised_only needs flow_supervision > 0: nothing would be trained")


_REGISTRY: dict[str, type[TrainingStage]] = {}


def _register(cls: type[TrainingStage]) -> type[TrainingStage]:
    _REGISTRY[cls.name] = cls
    return cls


class TrainingStage:
    """One training stage over a shared ``RFNet``: a subclass per stage.

    Args:
      model: the RFNet whose parts are trained and frozen.
      weights: the loss weights.
      settings: the stage's own settings, a :attr:`Settings`.

    Class attributes of a stage: ``name``; ``trained_parts``, the RFNet parts whose
    variables it changes (exported with its weights); ``dataset``, the
    ``rfnet_tf.data`` pipeline of its batches; ``Settings``, its settings' dataclass.
    """

    name: ClassVar[str]
    trained_parts: ClassVar[tuple[str, ...]]
    dataset: ClassVar
    Settings: ClassVar[type] = NoSettings

    def __init__(self, model: RFNet, weights: LossWeights = LossWeights(), settings=None):
        self.model = model
        self.weights = weights
        self.settings = self.Settings() if settings is None else settings

    @property
    def variables(self) -> list:
        """The variable group this stage updates; everything else stays frozen."""
        raise NotImplementedError

    def freeze(self) -> None:
        """Marks the frozen parts non-trainable (batch norm then keeps its statistics)."""
        for network in (self.model.transnet, self.model.affinenet, self.model.f2m):
            network.trainable = False
        self._unfreeze()

    def _unfreeze(self) -> None:
        raise NotImplementedError

    def recalibrate(self, batches: tf.data.Dataset) -> None:
        """Readies the model for inference mode (validation, export) after training
        steps, from the stage's training batches ``batches``; nothing by default."""

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
        if flow is not None:
            raise ValueError(f"the {self.name} stage has no flow to replace")
        return self._compute(batch, luma(batch["vis"]), training)

    def _compute(self, batch: dict, vis_luma: tf.Tensor, training: bool) -> tuple[dict, dict]:
        raise NotImplementedError


class NetworkStage(TrainingStage):
    """A stage that trains one whole network of RFNet, its one trained part."""

    @property
    def variables(self) -> list:
        (part,) = self.trained_parts
        return getattr(self.model, part).variable_group

    def _unfreeze(self) -> None:
        (part,) = self.trained_parts
        getattr(self.model, part).trainable = True


@_register
class TransNetStage(NetworkStage):
    """TransNet on aligned pairs, Eqs. 1-2."""

    name = "transnet"
    trained_parts = ("transnet",)
    dataset = staticmethod(transnet_dataset)

    def _compute(self, batch, vis_luma, training):
        nir = batch["nir"]
        out = self.model.transnet([vis_luma, nir], training=training)
        out = {key: tf.cast(value, tf.float32) for key, value in out.items()}
        terms = transnet_loss(
            vis_luma, nir, out["vis_recon"], out["nir_recon"], out["vis_to_nir"],
            out["nir_to_vis"], weights=self.weights, mask=batch["mask"],
        )
        images = {"vis": vis_luma, "nir": nir, "vis_to_nir": out["vis_to_nir"],
                  "nir_to_vis": out["nir_to_vis"]}
        return terms, images


@_register
class AffineNetStage(NetworkStage):
    """AffineNet with TransNet frozen, on synthetically misaligned pairs, Eqs. 4-5."""

    name = "affinenet"
    trained_parts = ("affinenet",)
    dataset = staticmethod(affinenet_dataset)
    Settings = AffineSettings

    def _compute(self, batch, vis_luma, training):
        nir = batch["nir"]
        settings = self.settings
        # The pipeline may carry the frozen TransNet's translation, made once per pair
        # (``affinenet_dataset(translated=...)``); else it is made here.
        translated = (
            batch["translated"]
            if "translated" in batch
            else self.model.transnet.translate_vis(vis_luma)
        )
        affine = self.model.affinenet(tf.concat([translated, nir], axis=-1), training=training)
        warped, _ = warp_affine(translated, affine)
        valid = warped_mask(batch["mask"], affine)
        ncc_loss = multiscale_coarse_loss(
            warped, nir, valid, scales=settings.ncc_scales,
            overlap_weighted=settings.overlap_weighted_ncc,
        )
        # Where the predicted and the true registration sample the moving crop: the
        # mean distance in pixels is monitored; in normalised units it is the
        # optional supervised term.
        shape = tf.shape(nir)
        predicted = affine_grid(affine, shape[1], shape[2])
        true = affine_grid(tf.cast(batch["affine"], tf.float32), shape[1], shape[2])
        error_px = tf.reduce_mean(tf.norm(predicted - true, axis=-1))
        terms = {"total": ncc_loss, "ncc": ncc_loss, "registration_error_px": error_px}
        if settings.affine_supervision:
            size = tf.cast(tf.reduce_max(shape[1:3]) - 1, tf.float32)
            supervised = error_px * 2.0 / size
            terms["supervised"] = supervised
            terms["total"] = ncc_loss + settings.affine_supervision * supervised
        registered, _ = warp_affine(vis_luma, affine)
        images = {"vis": vis_luma, "nir": nir, "vis_to_nir": translated,
                  "registered": registered}
        return terms, images


class F2MStage(TrainingStage):
    """The F2M phases: the model's fused image and flow, a phase's own loss on them.
    A phase trains either the deformation block alone or everything else of F2M."""

    trained_parts = ("f2m",)
    dataset = staticmethod(f2m_dataset)
    trains_deformation: ClassVar[bool]

    @property
    def variables(self) -> list:
        f2m = self.model.f2m
        return f2m.deformation_variables if self.trains_deformation else f2m.fusion_variables

    def _unfreeze(self) -> None:
        self.model.f2m.trainable = not self.trains_deformation
        self.model.f2m.deformation_block.trainable = self.trains_deformation

    def compute(self, batch, training=True, flow=None):
        vis_luma = luma(batch["vis"])
        nir = batch["nir"]
        jitter = self._jitter(batch)
        out = self.model.f2m([vis_luma, nir], training=training, flow=flow, jitter=jitter)
        fused = tf.cast(out["fused"], tf.float32)
        flow = tf.cast(out["flow"], tf.float32)
        terms = self._loss(fused, vis_luma, nir, flow, batch["mask"], jitter)
        error = tf.norm(flow - tf.cast(batch["flow"], tf.float32), axis=-1)
        terms["flow_error_px"] = tf.reduce_mean(error)
        terms = self._supervised(terms)
        registered = tf.cast(out["registered"], tf.float32)
        images = {"vis": vis_luma, "nir": nir, "fused": fused, "registered": registered}
        return terms, images

    def _jitter(self, batch) -> tf.Tensor | None:
        """The sub-pixel offsets F2M samples its branches at (``None``: none)."""
        return None

    def _loss(self, fused, vis_luma, nir, flow, mask, jitter) -> dict:
        raise NotImplementedError

    def _supervised(self, terms: dict) -> dict:
        """``terms`` with any supervised term added to the total (none by default)."""
        return terms


@_register
class FusionStage(F2MStage):
    """F2M phase 1: everything but the deformation block, Eqs. 6-8."""

    name, trains_deformation = "fusion", False

    def _loss(self, fused, vis_luma, nir, flow, mask, jitter):
        return fusion_loss(fused, vis_luma, nir, weights=self.weights, mask=mask)


@_register
class DeformationStage(F2MStage):
    """F2M phase 2: the deformation block alone, Eqs. 9-10."""

    name, trains_deformation = "deformation", True
    Settings = DeformationSettings

    def _jitter(self, batch):
        return batch["jitter"] if self.settings.subpixel_jitter else None

    def recalibrate(self, batches):
        """Recomputes the deformation block's batch-norm statistics with its current
        weights (inference has no jitter, so neither has this forward pass)."""
        f2m = self.model.f2m
        recompute_batch_norm_statistics(
            lambda batch: f2m([luma(batch["vis"]), batch["nir"]], training=True),
            batches.take(self.settings.batch_norm_batches),
            batch_norm_layers(f2m.deformation_block),
        )

    def _supervised(self, terms):
        weight = self.settings.flow_supervision
        if not weight:
            return terms
        unsupervised = 0.0 if self.settings.supervised_only else terms["total"]
        return dict(terms, total=unsupervised + weight * terms["flow_error_px"])

    def _loss(self, fused, vis_luma, nir, flow, mask, jitter):
        sampling_flow = flow
        if jitter is not None:
            # The fused image shows the scene at the VIS offset u plus the flow, the NIR
            # at its offset v: Eq. 9 compares it with the NIR sampled there too.
            vis_offset, nir_offset = jitter_flows(jitter, flow)
            sampling_flow = flow + vis_offset
            nir, _ = warp_flow(nir, nir_offset, padding_mode="border")
        valid = warped_mask(mask, sampling_flow)
        return deformation_loss(fused, nir, flow, weights=self.weights, mask=valid)


# The stages in training order.
STAGES = tuple(_REGISTRY)


def Stage(name: str, model: RFNet, weights: LossWeights = LossWeights(), **settings) -> TrainingStage:
    """The stage ``name`` of :data:`STAGES` over ``model``; ``settings`` are its
    ``Settings``' fields (e.g. ``ncc_scales=`` for ``"affinenet"``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown stage {name!r}; stages are {STAGES}")
    cls = _REGISTRY[name]
    return cls(model, weights, cls.Settings(**settings))
