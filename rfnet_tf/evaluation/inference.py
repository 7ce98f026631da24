"""RFNet inference for evaluation, from a weights directory or a SavedModel.

Both formats give a :class:`Predictor`: called on one pair at the images' own size
(never resized: RFNet itself resizes a copy to 384x384 for the affine, inside the
model), it returns the RFNet outputs for that pair as numpy arrays without the batch
axis. One ``tf.function`` with open sizes serves every image size, so nothing is
retraced between pairs of different sizes.

A predictor makes three calls: :data:`MODEL_CALL`, the whole model (or its coarse
module), :data:`FINE_CALL`, F2M alone on the unregistered pair (``RFNet.fine``), and
:data:`COARSE_SIFT_CALL`, the coarse module whose search also starts from a SIFT
estimate (an option beyond the paper).
A weights directory may hold only some parts (each training stage exports what it has
trained so far): with TransNet and AffineNet the coarse module runs alone (outputs
``affine`` and ``registered_coarse``); with all three parts the full model runs; with
F2M, the fine call runs (an F2M training run without a coarse module exports F2M
alone). A SavedModel (``rfnet_tf.export``) serves the whole model only: its one
signature.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from rfnet_tf import baselines
from rfnet_tf.colour import luma
from rfnet_tf.export import NIR_SPEC, VIS_SPEC, is_saved_model, load_serving_function
from rfnet_tf.metrics.registration import affine_distance
from rfnet_tf.networks.rfnet import FINE_MIN_GAIN
from rfnet_tf.weights import (
    PARTS,
    WeightsError,
    model_config,
    model_from_weights,
    read_config,
    resolve_weights_dir,
)

COARSE_PARTS = ("transnet", "affinenet")
WEIGHTS_FORMAT = "weights"
SAVED_MODEL_FORMAT = "saved_model"
# The coarse registration's confidence (``rfnet_tf.networks.refine.Confidence``).
CONFIDENCE_OUTPUTS = ("coarse_ncc", "coarse_overlap", "coarse_unsure")
COARSE_OUTPUTS = ("affine", "registered_coarse", *CONFIDENCE_OUTPUTS)
# Whether F2M's flow was applied (RFNet's fine_min_gain).
FINE_GUARD_OUTPUTS = ("fine_gain", "fine_kept")
FULL_OUTPUTS = (
    "registered_coarse", "registered", "fused", "fused_rgb", "affine", "flow", "mask",
    *CONFIDENCE_OUTPUTS, *FINE_GUARD_OUTPUTS,
)
FINE_OUTPUTS = ("registered", "fused", "fused_rgb", "flow", "mask", *FINE_GUARD_OUTPUTS)
# evaluate.py's --fine_guard: the guard on F2M's flow as rfnet.json stores it, off (the
# paper's F2M) or on with the shipped margin (rfnet_tf.networks.rfnet.FINE_MIN_GAIN).
FINE_GUARDS = ("stored", "off", "on")
MODEL_CALL = "rfnet"
FINE_CALL = "rfnet_fine"
# The coarse module whose search also starts from a SIFT estimate
# (rfnet_tf.baselines.sift_affine): an option beyond the paper.
COARSE_SIFT_CALL = "rfnet_coarse_sift"
COARSE_SIFT_OUTPUTS = ("affine", *CONFIDENCE_OUTPUTS, "sift_failed", "sift_kept")
# Where SIFT's estimate and the search's result agree within this many pixels (the
# largest distance of their sampling points at the image corners), SIFT's estimate is
# returned: features matched at full resolution are more precise than the optimum of the
# search's similarity (median landmark RMSE 0.37 against 0.55 px on the validation
# pairs). Where they disagree, the search's guards have chosen between them.
SIFT_AGREEMENT_PX = 2.0
# The calls a SavedModel serves.
SAVED_MODEL_CALLS = (MODEL_CALL,)


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """What a ``--weights`` path holds, found without loading anything.

    Attributes:
      path: the directory holding the weights (a stage directory's ``export/``) or the
        SavedModel.
      format: ``"weights"`` (rfnet_tf.weights) or ``"saved_model"``.
      parts: the RFNet parts present.
    """

    path: Path
    format: str
    parts: tuple[str, ...]

    @property
    def has_coarse(self) -> bool:
        """TransNet and AffineNet are present: the coarse module can run."""
        return all(part in self.parts for part in COARSE_PARTS)

    @property
    def has_full(self) -> bool:
        """Every part is present: the full model (registration and fusion) can run."""
        return all(part in self.parts for part in PARTS)

    @property
    def has_fine(self) -> bool:
        """F2M is present in a weights directory: F2M alone can run."""
        return self.format == WEIGHTS_FORMAT and "f2m" in self.parts


def inspect_weights(path: str | os.PathLike) -> WeightsInfo:
    """Identifies ``path``: a SavedModel, a weights directory or a stage directory.

    Raises:
      WeightsError: ``path`` does not exist or is none of these.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such directory")
    if is_saved_model(path):
        return WeightsInfo(path, SAVED_MODEL_FORMAT, PARTS)
    try:
        directory = resolve_weights_dir(path)
    except WeightsError as error:
        raise WeightsError(f"{error}; nor is it a SavedModel ({path}/saved_model.pb)") from error
    parts = tuple(part for part in PARTS if part in read_config(directory).get("parts", ()))
    return WeightsInfo(directory, WEIGHTS_FORMAT, parts)


@dataclasses.dataclass(eq=False)
class Predictor:
    """RFNet on one pair.

    Attributes:
      info: where the model came from and which parts it has.
      outputs: the output keys the whole-model call returns (:data:`FULL_OUTPUTS`,
        :data:`COARSE_OUTPUTS` for a coarse-only weights directory, or none for F2M
        alone).
      function: the whole-model call, ``(vis (B, H, W, 3), nir (B, H, W, 1)) -> dict``
        of tensors; ``None`` when the weights cannot run it.
      model_config: the ``RFNet`` constructor arguments in effect (``None`` for a
        SavedModel).
      fine_function: the fine call (``RFNet.fine``, :data:`FINE_OUTPUTS`), same
        signature; ``None`` when the weights cannot run it.
      start_function: the coarse module whose search starts from a given estimate,
        ``(vis, nir, start (B, 1, 2, 3)) -> dict`` (``RFNet.coarse(extra_starts=)``);
        ``None`` when the weights cannot run it.
    """

    info: WeightsInfo
    outputs: tuple[str, ...]
    function: Callable[[tf.Tensor, tf.Tensor], dict] | None
    model_config: dict | None = None
    fine_function: Callable[[tf.Tensor, tf.Tensor], dict] | None = None
    start_function: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], dict] | None = None

    @property
    def is_full(self) -> bool:
        return set(FULL_OUTPUTS) <= set(self.outputs)

    def __call__(
        self, vis: np.ndarray, nir: np.ndarray, call: str = MODEL_CALL, moving_mask=None
    ) -> dict[str, np.ndarray]:
        """Runs one call of the model on one pair.

        Args:
          vis: ``(H, W, 3)`` RGB or ``(H, W, 1)`` grey in ``[0, 1]`` (grey is passed as
            three equal channels, whose luma is the grey image itself).
          nir: ``(H, W, 1)`` in ``[0, 1]``.
          call: :data:`MODEL_CALL`, :data:`FINE_CALL` or :data:`COARSE_SIFT_CALL` (which
            first estimates the affine with SIFT on the luma and adds it to the coarse
            search's starts, then keeps SIFT's estimate where the two agree within
            :data:`SIFT_AGREEMENT_PX`; where SIFT fails, it is the model's own call;
            ``sift_failed`` and ``sift_kept`` say which).
          moving_mask: ``(H, W)`` where the VIS shows image content (a synthetic
            misalignment's), or ``None``: SIFT's keypoints are taken inside it, as the
            ``sift`` baseline takes them.

        Returns:
          ``{key: array}`` for the call's outputs, batch axis removed: images
          ``(H, W, C)``, ``affine (2, 3)``, ``flow (H, W, 2)`` ``(dy, dx)`` px, the
          confidence as scalars.

        Raises:
          ValueError: the weights cannot run ``call``.
        """
        function, outputs = {
            MODEL_CALL: (self.function, self.outputs),
            FINE_CALL: (self.fine_function, FINE_OUTPUTS),
            COARSE_SIFT_CALL: (self.start_function, COARSE_SIFT_OUTPUTS),
        }[call]
        if function is None:
            raise ValueError(f"{self.info.path}: the model loaded from it cannot run {call}")
        vis = np.asarray(vis, np.float32)
        if vis.shape[-1] == 1:
            vis = np.repeat(vis, 3, axis=-1)
        nir = np.asarray(nir, np.float32)
        inputs = [tf.constant(vis[None]), tf.constant(nir[None])]
        extra = {}
        if call == COARSE_SIFT_CALL:
            estimate = baselines.sift_affine(
                np.asarray(luma(vis.astype(np.float64)))[..., 0] * 255.0,
                nir[..., 0].astype(np.float64) * 255.0,
                moving_mask=moving_mask,
            )
            extra["sift_failed"] = estimate.failed
            if estimate.failed:
                function = self.function
            else:
                inputs.append(tf.constant(np.asarray(estimate.theta, np.float32)[None, None]))
        result = function(*inputs)
        result = {key: result[key].numpy()[0] for key in outputs if key in result}
        if call == COARSE_SIFT_CALL:
            extra["sift_kept"] = not estimate.failed and bool(
                affine_distance(estimate.theta, result["affine"], nir.shape) <= SIFT_AGREEMENT_PX
            )
            if extra["sift_kept"]:
                result["affine"] = np.asarray(estimate.theta, np.float32)
        return {**result, **extra}


def load_predictor(
    info: WeightsInfo, coarse_refinement_steps: int | None = None, fine_guard: str = "stored"
) -> Predictor:
    """Loads the model ``info`` describes.

    Args:
      info: see :func:`inspect_weights`.
      coarse_refinement_steps: replaces the test-time refinement steps stored with the
        weights (``RFNet(coarse_refinement_steps=...)``); ``None`` keeps them.
      fine_guard: one of :data:`FINE_GUARDS`: ``"stored"`` keeps the weights'
        ``fine_min_gain``, ``"off"`` sets it to ``None``, ``"on"`` to ``FINE_MIN_GAIN``.

    Raises:
      WeightsError: a weights directory with neither the coarse module (TransNet and
        AffineNet) nor F2M, files that do not fit the model, or a refinement or guard
        override for a SavedModel (whose graph fixed both at export).
    """
    if info.format == SAVED_MODEL_FORMAT:
        if coarse_refinement_steps is not None or fine_guard != "stored":
            raise WeightsError(
                f"{info.path}: a SavedModel's coarse refinement and fine guard were fixed "
                "when it was exported; evaluate the weights directory to change them"
            )
        serving = load_serving_function(info.path)
        return Predictor(info, FULL_OUTPUTS, lambda vis, nir: serving(vis=vis, nir=nir))
    if not (info.has_coarse or info.has_fine):
        raise WeightsError(
            f"{info.path}: holds {list(info.parts) or 'no parts'}; RFNet needs at least "
            f"{list(COARSE_PARTS)} (the coarse module) or ['f2m'] (F2M alone)"
        )
    overrides = {}
    if coarse_refinement_steps is not None:
        overrides["coarse_refinement_steps"] = coarse_refinement_steps
    if fine_guard != "stored":
        overrides["fine_min_gain"] = FINE_MIN_GAIN if fine_guard == "on" else None
    model = model_from_weights(info.path, required=info.parts, overrides=overrides)
    config = model_config(model)
    # Traced on first use only: a call the evaluation does not need costs nothing.
    fine = tf.function(model.fine, input_signature=[VIS_SPEC, NIR_SPEC]) if info.has_fine else None
    start = None
    if info.has_coarse:
        start = tf.function(
            lambda vis, nir, start: model.coarse(vis, nir, extra_starts=start),
            input_signature=[VIS_SPEC, NIR_SPEC, tf.TensorSpec([None, 1, 2, 3], tf.float32)],
        )
    if info.has_full:

        @tf.function(input_signature=[VIS_SPEC, NIR_SPEC])
        def full(vis, nir):
            return model([vis, nir], training=False)

        return Predictor(info, FULL_OUTPUTS, full, config, fine, start)
    if not info.has_coarse:
        return Predictor(info, (), None, config, fine)

    @tf.function(input_signature=[VIS_SPEC, NIR_SPEC])
    def coarse(vis, nir):
        outputs = model.coarse(vis, nir)
        return {**outputs, "registered_coarse": outputs["registered"]}

    return Predictor(info, COARSE_OUTPUTS, coarse, config, fine, start)
