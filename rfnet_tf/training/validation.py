"""Validation during training: landmark RMSE on held-out pairs, logged against the step.

A stage that learns a registration (AffineNet; F2M's deformation block) is measured as
it trains on real pairs that the run never sees, each misaligned by seeded synthetic
transforms (``rfnet_tf.evaluation.sources.misalign``, the same draws as
``evaluate.py --data_dir=... --seed=S``), at full resolution, by the landmark RMSE of
the paper's Table 1 (fixed-frame pixels):

* ``affinenet``: the coarse module's single pass (``RFNet.predict_affine`` with the
  model's refinement, which training leaves at 0), under an ``affine`` misalignment;
* ``deformation``: F2M alone on the unregistered pair (its flow), under a ``local``
  misalignment.

Each call returns the mean and the median RMSE over every (pair, draw) and the same
for the unregistered input, and the mean end-point error of the registration against
the truth over every pixel (``epe_mean``, ``identity_epe_mean``, moving px). The RMSE
maps the moving landmarks through the registration's inverse, which a folding flow does
not have (NaN, ``metrics.map_moving_to_fixed``); the end-point error is defined for any
registration, so the curve stays readable when a stage learns folds. The loop writes
them to TensorBoard and, one JSON object per line, to ``<stage dir>/validation.jsonl``,
from which
``python -m rfnet_tf.training.plot_validation`` draws the learning curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from rfnet_tf.colour import luma
from rfnet_tf.data import Pair
from rfnet_tf.data.synthetic import AffineRanges, LocalFieldRanges
from rfnet_tf.evaluation.sources import Sample, misalign
from rfnet_tf.metrics import (
    landmark_errors,
    landmark_summary,
    map_moving_to_fixed,
    sampling_coordinates,
)
from rfnet_tf.networks import RFNet

VALIDATION_LOG = "validation.jsonl"
# The misalignment each validated stage undoes.
STAGE_MISALIGNMENT = {"affinenet": "affine", "deformation": "local"}
NUM_LANDMARKS = 5

_VIS_SPEC = tf.TensorSpec([1, None, None, 3], tf.float32)
_NIR_SPEC = tf.TensorSpec([1, None, None, 1], tf.float32)


def end_point_error(sample: Sample, theta=None, flow=None) -> float:
    """Mean ``|T(p) - T_true(p)|`` over every fixed pixel ``p``, in moving-image px, of a
    registration ``T(p) = T_theta(p + flow(p))`` against the sample's exact one."""
    shape = sample.pair.nir.shape[:2]
    coords = sampling_coordinates(shape, theta=theta, flow=flow)
    return float(np.mean(np.linalg.norm(coords - sample.truth.registration_coordinates(), axis=-1)))


def landmark_rmse(sample: Sample, theta=None, flow=None) -> float:
    """Landmark RMSE (fixed px) of a registration ``T(p) = T_theta(p + flow(p))``."""
    pair = sample.pair
    carried = map_moving_to_fixed(pair.vis_points, pair.nir.shape, theta=theta, flow=flow)
    return float(landmark_summary(landmark_errors(carried, pair.nir_points))["rmse"])


class Validation:
    """Landmark RMSE of a stage's registration on held-out pairs (module docstring).

    Args:
      stage: ``"affinenet"`` or ``"deformation"``.
      pairs: aligned held-out pairs at full resolution.
      draws: synthetic misalignments per pair, seeds ``0 .. draws - 1``.
      affine_ranges, field_ranges: the misalignment ranges.
    """

    def __init__(
        self,
        stage: str,
        pairs: Sequence[Pair],
        draws: int = 1,
        affine_ranges: AffineRanges = AffineRanges(),
        field_ranges: LocalFieldRanges = LocalFieldRanges(),
    ):
        if stage not in STAGE_MISALIGNMENT:
            raise ValueError(f"no validation for stage {stage!r}; stages: {list(STAGE_MISALIGNMENT)}")
        if draws < 1 or not pairs:
            raise ValueError("validation needs pairs and at least one draw")
        self.stage = stage
        kind = STAGE_MISALIGNMENT[stage]
        self.samples = [
            misalign(pair, kind, seed, NUM_LANDMARKS, affine_ranges, field_ranges)
            for seed in range(draws)
            for pair in pairs
        ]
        identity = [landmark_rmse(sample) for sample in self.samples]
        self.identity = {"identity_rmse_mean": float(np.mean(identity)),
                         "identity_rmse_median": float(np.median(identity)),
                         "identity_epe_mean": float(np.mean([end_point_error(s) for s in self.samples])),
                         }
        # One traced function per model, reused by every call.
        self._registrations = {}

    def _registration(self, model: RFNet):
        """A graph function of one pair returning the stage's ``(theta, flow)``."""
        if self.stage == "affinenet":

            @tf.function(input_signature=[_VIS_SPEC, _NIR_SPEC])
            def predict(vis, nir):
                return model.predict_affine(vis, nir)[0]

            return lambda vis, nir: (predict(vis, nir).numpy(), None)

        @tf.function(input_signature=[_VIS_SPEC, _NIR_SPEC])
        def flow(vis, nir):
            return model.f2m([luma(vis), nir], training=False)["flow"][0]

        return lambda vis, nir: (None, flow(vis, nir).numpy())

    def __call__(self, model: RFNet) -> dict[str, float]:
        """``{"rmse_mean", "rmse_median", "epe_mean"}`` and the same of the identity
        (``identity_`` prefix)."""
        if id(model) not in self._registrations:
            self._registrations[id(model)] = self._registration(model)
        register = self._registrations[id(model)]
        errors, end_point_errors = [], []
        for sample in self.samples:
            vis = sample.pair.vis if sample.pair.vis.shape[-1] == 3 else np.repeat(
                sample.pair.vis, 3, axis=-1
            )
            theta, flow = register(tf.constant(vis[None]), tf.constant(sample.pair.nir[None]))
            errors.append(landmark_rmse(sample, theta=theta, flow=flow))
            end_point_errors.append(end_point_error(sample, theta=theta, flow=flow))
        return {"rmse_mean": float(np.mean(errors)), "rmse_median": float(np.median(errors)),
                "epe_mean": float(np.mean(end_point_errors)), **self.identity}
