"""RFNet inference for evaluation, from a weights directory or a SavedModel.

Both formats give a :class:`Predictor`: called on one pair at the images' own size
(never resized: RFNet itself resizes a copy to 384x384 for the affine, inside the
model), it returns the RFNet outputs for that pair as numpy arrays without the batch
axis. One ``tf.function`` with open sizes serves every image size, so nothing is
retraced between pairs of different sizes.

A weights directory may hold only some parts (each training stage exports what it has
trained so far): with TransNet and AffineNet the coarse module runs alone (outputs
``affine`` and ``registered_coarse``); with all three parts the full model runs. A
SavedModel (``rfnet_tf.export``) is always the full model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from rfnet_tf.export import NIR_SPEC, VIS_SPEC, is_saved_model, load_serving_function
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
COARSE_OUTPUTS = ("affine", "registered_coarse")
FULL_OUTPUTS = ("registered_coarse", "registered", "fused", "fused_rgb", "affine", "flow", "mask")


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
      outputs: the output keys this predictor returns (:data:`FULL_OUTPUTS`, or
        :data:`COARSE_OUTPUTS` for a coarse-only weights directory).
      function: ``(vis (B, H, W, 3), nir (B, H, W, 1)) -> dict`` of tensors.
      model_config: the ``RFNet`` constructor arguments in effect (``None`` for a
        SavedModel).
    """

    info: WeightsInfo
    outputs: tuple[str, ...]
    function: Callable[[tf.Tensor, tf.Tensor], dict]
    model_config: dict | None = None

    @property
    def is_full(self) -> bool:
        return set(FULL_OUTPUTS) <= set(self.outputs)

    def __call__(self, vis: np.ndarray, nir: np.ndarray) -> dict[str, np.ndarray]:
        """Runs the model on one pair.

        Args:
          vis: ``(H, W, 3)`` RGB or ``(H, W, 1)`` grey in ``[0, 1]`` (grey is passed as
            three equal channels, whose luma is the grey image itself).
          nir: ``(H, W, 1)`` in ``[0, 1]``.

        Returns:
          ``{key: array}`` for ``self.outputs``, batch axis removed: images
          ``(H, W, C)``, ``affine (2, 3)``, ``flow (H, W, 2)`` ``(dy, dx)`` px.
        """
        vis = np.asarray(vis, np.float32)
        if vis.shape[-1] == 1:
            vis = np.repeat(vis, 3, axis=-1)
        nir = np.asarray(nir, np.float32)
        result = self.function(tf.constant(vis[None]), tf.constant(nir[None]))
        return {key: result[key].numpy()[0] for key in self.outputs}


def load_predictor(info: WeightsInfo, coarse_refinement_steps: int | None = None) -> Predictor:
    """Loads the model ``info`` describes.

    Args:
      info: see :func:`inspect_weights`.
      coarse_refinement_steps: replaces the test-time refinement steps stored with the
        weights (``RFNet(coarse_refinement_steps=...)``); ``None`` keeps them.

    Raises:
      WeightsError: a weights directory without the coarse module (TransNet and
        AffineNet), files that do not fit the model, or a refinement override for a
        SavedModel (whose graph fixed it at export).
    """
    if info.format == SAVED_MODEL_FORMAT:
        if coarse_refinement_steps is not None:
            raise WeightsError(
                f"{info.path}: a SavedModel's coarse refinement was fixed when it was "
                "exported; evaluate the weights directory to change it"
            )
        serving = load_serving_function(info.path)
        return Predictor(info, FULL_OUTPUTS, lambda vis, nir: serving(vis=vis, nir=nir))
    if not info.has_coarse:
        raise WeightsError(
            f"{info.path}: holds {list(info.parts) or 'no parts'}; RFNet needs at least "
            f"{list(COARSE_PARTS)} (the coarse module)"
        )
    overrides = {}
    if coarse_refinement_steps is not None:
        overrides["coarse_refinement_steps"] = coarse_refinement_steps
    model = model_from_weights(info.path, required=info.parts, overrides=overrides)
    config = model_config(model)
    if info.has_full:

        @tf.function(input_signature=[VIS_SPEC, NIR_SPEC])
        def full(vis, nir):
            return model([vis, nir], training=False)

        return Predictor(info, FULL_OUTPUTS, full, config)

    @tf.function(input_signature=[VIS_SPEC, NIR_SPEC])
    def coarse(vis, nir):
        outputs = model.coarse(vis, nir)
        return {"affine": outputs["affine"], "registered_coarse": outputs["registered"]}

    return Predictor(info, COARSE_OUTPUTS, coarse, config)
