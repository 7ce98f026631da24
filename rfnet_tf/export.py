"""Exports a trained RFNet as a TensorFlow SavedModel for serving.

    python -m rfnet_tf.export --weights=runs/f2m/fine --out=exported/rfnet

The SavedModel holds one ``tf.Module`` wrapping the Keras ``RFNet``; its
``serving_default`` signature takes

* ``vis``: ``float32 [batch, height, width, 3]`` RGB in ``[0, 1]`` (a grey VIS is
  passed as three equal channels: the luma of that is the grey image itself),
* ``nir``: ``float32 [batch, height, width, 1]`` in ``[0, 1]``,

with every size left open (one trace serves any image size), and returns the
``RFNet`` output dict: ``registered_coarse``, ``registered``, ``fused``,
``fused_rgb``, ``affine``, ``flow``, ``mask``, the coarse registration's confidence and
the guard on F2M's flow (see ``rfnet_tf.networks.rfnet.RFNet``).
A ``vis`` and ``nir`` that differ in batch size, height or width, or with a side under
``MIN_IMAGE_SIZE`` (5) pixels, raise ``InvalidArgumentError`` naming both shapes.
Loading needs TensorFlow only: ``tf.saved_model.load(path).signatures["serving_default"]``.

Exit codes and messages of the command line: ``rfnet_tf.cli``.
"""

from __future__ import annotations

import os
from pathlib import Path

from rfnet_tf.startup import native_stderr_silenced

with native_stderr_silenced():  # TensorFlow's C++ start-up lines; see rfnet_tf.startup
    import tensorflow as tf

    tf.config.list_physical_devices("GPU")

from absl import flags

from rfnet_tf import cli
from rfnet_tf.networks import RFNet
from rfnet_tf.staging import DestinationError, check_destination, staged_directory
from rfnet_tf.weights import PARTS, WeightsError, model_from_weights

SIGNATURE_KEY = "serving_default"
SAVED_MODEL_FILE = "saved_model.pb"
VIS_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name="vis")
NIR_SPEC = tf.TensorSpec([None, None, None, 1], tf.float32, name="nir")


class ExportError(ValueError):
    """The export's flags are missing or out of range."""


class RFNetServing(tf.Module):
    """A ``tf.Module`` holding an ``RFNet`` and its serving function (inference mode)."""

    def __init__(self, model: RFNet):
        super().__init__(name="rfnet_serving")
        self.model = model

    @tf.function(input_signature=[VIS_SPEC, NIR_SPEC])
    def serve(self, vis: tf.Tensor, nir: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.model([vis, nir], training=False)


def is_saved_model(path: str | os.PathLike) -> bool:
    """True if ``path`` is a SavedModel directory."""
    return (Path(path) / SAVED_MODEL_FILE).is_file()


def check_export_dir(directory: str | os.PathLike) -> Path:
    """``directory``, made absolute, if a SavedModel may take its place.

    Raises:
      DestinationError: as ``rfnet_tf.staging.check_destination``, or ``directory``
        exists and is neither empty nor a SavedModel (it is replaced, so it must not hold
        anything else).
    """
    directory = check_destination(directory)
    if directory.exists() and not (is_saved_model(directory) or not any(directory.iterdir())):
        raise DestinationError(
            f"{directory}: exists and is not a SavedModel directory; refusing to replace it"
        )
    return directory


def export_saved_model(model: RFNet, directory: str | os.PathLike) -> Path:
    """Writes ``model`` as a SavedModel (signature ``serving_default``) to ``directory``.

    Atomic: the SavedModel is written to a temporary sibling directory that then
    replaces ``directory``, so a reader never sees a half-written export.

    Raises:
      DestinationError: see :func:`check_export_dir`.
    """
    directory = check_export_dir(directory)
    with staged_directory(directory) as staging:
        module = RFNetServing(model)
        tf.saved_model.save(module, str(staging), signatures={SIGNATURE_KEY: module.serve})
    return directory


def load_serving_function(directory: str | os.PathLike):
    """The ``serving_default`` concrete function of a SavedModel (call with ``vis=, nir=``).

    The loaded object is attached to the function so that its variables stay alive.
    """
    loaded = tf.saved_model.load(str(directory))
    function = loaded.signatures[SIGNATURE_KEY]
    function.loaded_saved_model = loaded
    return function


def describe_signature(function) -> str:
    """One line per input and output of a serving signature: name, dtype, shape."""

    def line(name: str, spec: tf.TensorSpec) -> str:
        dims = ", ".join("None" if d is None else str(d) for d in spec.shape.as_list())
        return f"    {name}: {spec.dtype.name} [{dims}]"

    _, inputs = function.structured_input_signature
    outputs = function.structured_outputs
    return "\n".join(
        [f"signature '{SIGNATURE_KEY}'", "  inputs:"]
        + [line(name, inputs[name]) for name in sorted(inputs)]
        + ["  outputs:"]
        + [line(name, outputs[name]) for name in sorted(outputs)]
    )


def main(argv) -> None:
    values = flags.FLAGS
    if not values.weights or not values.out:
        raise ExportError("--weights and --out are both required")
    if values.coarse_refinement_steps is not None and values.coarse_refinement_steps < 0:
        raise ExportError(
            f"--coarse_refinement_steps must be at least 0, got {values.coarse_refinement_steps}"
        )
    check_export_dir(values.out)
    overrides = {}
    if values.coarse_refinement_steps is not None:
        overrides["coarse_refinement_steps"] = values.coarse_refinement_steps
    model = model_from_weights(values.weights, required=PARTS, overrides=overrides)
    directory = export_saved_model(model, values.out)
    print(f"SavedModel written to {directory}")
    print(describe_signature(load_serving_function(directory)))


def _define_flags() -> None:
    """The command-line flags; defined only when run as a script, so that importing
    this module next to another script's flags (e.g. evaluate.py's --weights) is safe."""
    flags.DEFINE_string(
        "weights", None,
        "A complete RFNet weights directory (rfnet_tf.weights format with transnet, "
        "affinenet and f2m), or a training stage directory holding export/.",
    )
    flags.DEFINE_string("out", None, "Where to write the SavedModel (a directory).")
    flags.DEFINE_integer(
        "coarse_refinement_steps", None,
        "Test-time refinement steps of the coarse affine built into the SavedModel (0 = "
        "AffineNet's single pass). Default: the value stored with the weights.",
    )


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "rfnet_tf.export", (WeightsError, ExportError, DestinationError))
