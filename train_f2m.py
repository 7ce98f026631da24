"""Trains RFNet's F2M: phase 1 (fusion), then phase 2 (the deformation block alone).

    python train_f2m.py --data_dir=../shared/data/vis_nir --coarse_dir=runs/coarse/affinenet \\
        --phase=all --model_dir=runs/f2m

With ``--coarse_dir`` the coarse module registers every training pair first, so F2M
learns on coarse-aligned pairs (to which the pipeline adds a synthetic local
misalignment), and the export of the last phase is the complete RFNet. Each phase keeps
its checkpoints, flags, events and export in ``<model_dir>/<phase>/``; the deformation
phase starts from the fusion weights of ``--fusion_dir`` (default ``--model_dir``).
``--coarse_dir`` and ``--fusion_dir`` each take the earlier stage's directory
(``runs/coarse/affinenet``, ``runs/f2m/fusion``), its weights directory, or the model
directory holding it (``runs/coarse``, ``runs/f2m``).

Bad flags, input or weights, a non-finite loss and a stage none of whose checkpoints
restores end the run with one line and exit code 2; SIGINT / SIGTERM with one line and
130 / 143 (``rfnet_tf.cli``).
"""

from __future__ import annotations

import sys

from rfnet_tf.startup import native_stderr_silenced

with native_stderr_silenced():
    import tensorflow as tf

    # Probing for GPUs logs CUDA lines; do it now, silently (the logical devices stay
    # unconfigured for --cpu_devices).
    tf.config.list_physical_devices("GPU")

from absl import flags

from rfnet_tf import cli, misalignment_flags
from rfnet_tf.networks.f2m import DEFORMATION_BLOCKS
from rfnet_tf.training import common_flags
from rfnet_tf.training.common_flags import (
    FlagError,
    define_common_flags,
    quiet_tensorflow_logs,
    validate_common_flags,
)
from rfnet_tf.training.scripts import TRAINING_ERRORS, run_f2m
from rfnet_tf.training.settings import F2MSettings
from rfnet_tf.training.stages import DeformationSettings, LossWeights

flags.DEFINE_enum("phase", "all", ["fusion", "deformation", "all"], "Which F2M phase(s) to train.")
flags.DEFINE_string(
    "coarse_dir", "",
    "Coarse module weights that align the training pairs first: the affinenet stage's "
    "directory, its weights directory, or the model directory holding affinenet/ ('' = "
    "pairs used as given).",
)
flags.DEFINE_string(
    "fusion_dir", "",
    "The fusion phase's weights for the deformation phase: the fusion stage's directory, its "
    "weights directory, or the model directory holding fusion/ (default --model_dir).",
)
flags.DEFINE_float("gamma", LossWeights.gamma, "Weight of the NIR intensity term, Eq. 7.")
flags.DEFINE_float("delta", LossWeights.delta, "Weight of the gradient loss, Eq. 6.")
flags.DEFINE_float(
    "lambda_smooth", LossWeights.lambda_smooth,
    "Weight of the smoothness term, Eq. 9; Eq. 10 measures the field in normalised units "
    "(2 px / (size - 1) per axis; losses.deformation).",
)
flags.DEFINE_float("alpha", LossWeights.alpha, "Edge sensitivity of the bilateral smoothness, Eq. 10.")
flags.DEFINE_float("max_displacement", 16.0, "Bound of the deformation field, pixels.")
flags.DEFINE_enum(
    "deformation_block_type", "unet", list(DEFORMATION_BLOCKS),
    "F2M's deformation block: 'unet' (the paper's) or 'correlation' (an option that compares "
    "the two images' descriptors in a cost volume; rfnet_tf.networks.correlation_flow).",
)
flags.DEFINE_boolean(
    "subpixel_jitter", DeformationSettings.subpixel_jitter,
    "Deformation phase: F2M samples the VIS and NIR features at random sub-pixel offsets "
    "(the loss compares with the NIR at its offset), so that the blur of bilinear "
    "resampling cannot lower Eq. 9; --nosubpixel_jitter trains Eq. 9 as it stands, which "
    "is lowest at a constant half-pixel flow.",
)
flags.DEFINE_float(
    "flow_supervision", DeformationSettings.flow_supervision,
    "Deformation phase: weight of a supervised term, the flow's mean end-point error in "
    "pixels against the synthetic ground truth (0: unsupervised, as in the paper).",
)
flags.DEFINE_boolean(
    "supervised_only", DeformationSettings.supervised_only,
    "Deformation phase: train on --flow_supervision's term alone (Eq. 9's terms are logged, "
    "not trained on); an ablation.",
)
flags.DEFINE_integer(
    "batch_norm_batches", DeformationSettings.batch_norm_batches,
    "Deformation phase: before each validation and the export, recompute the deformation "
    "block's batch-norm statistics with its current weights over this many training "
    "batches (0: keep the moving averages, which lag behind the weights).",
)
flags.DEFINE_integer(
    "attention_window",
    None,
    "Window of the attention's max pooling, pixels (0 = the global max of the paper; default "
    "--crop_size). The deformation phase keeps the fusion weights' own.",
)
define_common_flags(default_model_dir="runs/f2m", default_epochs=30)
misalignment_flags.define_local_flags()
misalignment_flags.define_curriculum_flags()
# The shared flags show in --helpshort too.
flags.adopt_module_key_flags(common_flags)
flags.adopt_module_key_flags(misalignment_flags)
FLAGS = flags.FLAGS


def main(argv) -> None:
    quiet_tensorflow_logs()
    validate_common_flags(FLAGS)
    if not 0.0 <= FLAGS.gamma <= 1.0:
        raise FlagError(f"--gamma must be in [0, 1], got {FLAGS.gamma}")
    if FLAGS.flow_supervision < 0:
        raise FlagError(f"--flow_supervision must be >= 0, got {FLAGS.flow_supervision}")
    if FLAGS.supervised_only and FLAGS.flow_supervision <= 0:
        raise FlagError("--supervised_only needs --flow_supervision > 0")
    if FLAGS.batch_norm_batches < 0:
        raise FlagError(f"--batch_norm_batches must be >= 0, got {FLAGS.batch_norm_batches}")
    if FLAGS.max_displacement <= 0:
        raise FlagError(f"--max_displacement must be positive, got {FLAGS.max_displacement}")
    if FLAGS.attention_window is not None and FLAGS.attention_window < 0:
        raise FlagError(f"--attention_window must be >= 0, got {FLAGS.attention_window}")
    run_f2m(F2MSettings.from_flags(FLAGS, sys.modules[__name__].__file__))


if __name__ == "__main__":
    cli.run(main, "train_f2m.py", TRAINING_ERRORS)
