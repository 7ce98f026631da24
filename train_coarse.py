"""Trains RFNet's coarse registration module: TransNet, then AffineNet with TransNet frozen.

    python train_coarse.py --data_dir=../shared/data/vis_nir --stage=all --model_dir=runs/coarse

Each stage keeps its checkpoints, flags, TensorBoard events and final weights export in
``<model_dir>/<stage>/``; a run started where a checkpoint exists resumes from it. The
AffineNet stage reads TransNet from ``--transnet_dir`` (default ``--model_dir``).
``train_f2m.py --coarse_dir=<model_dir>`` continues. A flag naming an earlier stage's
output takes that stage's directory, its weights directory, or the model directory
holding it (``rfnet_tf.training.settings.stage_weights``).

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
from rfnet_tf.networks.affinenet import HEADS
from rfnet_tf.training import common_flags
from rfnet_tf.training.common_flags import (
    FlagError,
    define_common_flags,
    quiet_tensorflow_logs,
    validate_common_flags,
)
from rfnet_tf.training.scripts import TRAINING_ERRORS, run_coarse
from rfnet_tf.training.settings import CoarseSettings
from rfnet_tf.training.stages import AffineSettings, LossWeights

flags.DEFINE_enum("stage", "all", ["transnet", "affinenet", "all"], "Which coarse stage(s) to train.")
flags.DEFINE_integer(
    "affine_input_size", 384,
    "RFNet feeds TransNet and AffineNet a copy of the pair resized to this square size; "
    "the coarse stages train on pairs resized the same way (then cropped to --crop_size).",
)
flags.DEFINE_bool(
    "native_resolution", False,
    "Train on crops of the pairs at their own resolution instead (the paper's text), "
    "although inference sees resized copies.",
)
flags.DEFINE_list(
    "training_zooms", ["1"],
    "The coarse stages train on copies of the pairs resized to --affine_input_size times "
    "each of these zooms (>= 1); a --crop_size crop of a zoom above 1 is a window of the "
    "scene at that magnification. An augmentation (not in the paper): more distinct views "
    "of few training pairs.",
)
flags.DEFINE_float("eta", LossWeights.eta, "Weight of the translation term, Eq. 2.")
flags.DEFINE_integer(
    "ncc_scales", AffineSettings.ncc_scales,
    "Average Eq. 4 over this many dyadic scales (1: the paper's loss). More scales widen "
    "the loss's reach for large misalignments on short schedules.",
)
flags.DEFINE_bool(
    "overlap_weighted_ncc", AffineSettings.overlap_weighted_ncc,
    "Weight each image's Eq. 4 NCC by its overlap with the frame (an extension: the masked "
    "NCC alone rewards affines that move the image partly out of the frame).",
)
flags.DEFINE_float(
    "affine_supervision", AffineSettings.affine_supervision,
    "Weight of a supervised term on the synthetic ground-truth affine (0: unsupervised, "
    "as in the paper).",
)
flags.DEFINE_bool(
    "translation_cache", True,
    "AffineNet stage: translate each training pair once with the frozen TransNet and "
    "misalign the translation with the VIS in the input pipeline, instead of running "
    "TransNet on every batch (1.7-1.9 times the steps per hour; docs/PERFORMANCE.md).",
)
flags.DEFINE_string(
    "transnet_dir", "",
    "TransNet weights for the AffineNet stage: the transnet stage's directory, its weights "
    "directory, or the model directory holding transnet/ (default --model_dir).",
)
flags.DEFINE_bool("deformable", True, "Deformable convolutions in AffineNet (False: the paper's ablation ii).")
flags.DEFINE_enum(
    "affine_head", "pooled", list(HEADS),
    "AffineNet's head: 'pooled' (the spec's: global average pool, dense -> 6) or "
    "'matching' (the shipped weights': the affine fitted to the local correlation of the "
    "two images' features; weights/README.md items 14-15).",
)
define_common_flags(default_model_dir="runs/coarse", default_epochs=100)
misalignment_flags.define_affine_flags()
misalignment_flags.define_curriculum_flags()
# The shared flags show in --helpshort too.
flags.adopt_module_key_flags(common_flags)
flags.adopt_module_key_flags(misalignment_flags)
FLAGS = flags.FLAGS


def main(argv) -> None:
    quiet_tensorflow_logs()
    validate_common_flags(FLAGS)
    if FLAGS.ncc_scales < 1 or FLAGS.affine_input_size < 2 ** (FLAGS.ncc_scales + 2):
        raise FlagError(f"--ncc_scales {FLAGS.ncc_scales} needs --affine_input_size >= "
                        f"{2 ** (FLAGS.ncc_scales + 2)} and is at least 1")
    if FLAGS.affine_supervision < 0:
        raise FlagError(f"--affine_supervision must be >= 0, got {FLAGS.affine_supervision}")
    if FLAGS.affine_input_size < 32:
        raise FlagError(f"--affine_input_size must be at least 32, got {FLAGS.affine_input_size}")
    if not FLAGS.native_resolution and FLAGS.affine_input_size < FLAGS.crop_size:
        raise FlagError(
            f"--crop_size {FLAGS.crop_size} exceeds the resized pairs' --affine_input_size "
            f"{FLAGS.affine_input_size}"
        )
    try:
        zooms = [float(zoom) for zoom in FLAGS.training_zooms]
    except ValueError as error:
        raise FlagError(f"--training_zooms must be numbers, got {FLAGS.training_zooms}") from error
    if not zooms or min(zooms) < 1:
        raise FlagError(f"--training_zooms must be at least 1, got {FLAGS.training_zooms}")
    if FLAGS.native_resolution and zooms != [1.0]:
        raise FlagError("--training_zooms resizes the pairs; it does not go with --native_resolution")
    run_coarse(CoarseSettings.from_flags(FLAGS, sys.modules[__name__].__file__))


if __name__ == "__main__":
    cli.run(main, "train_coarse.py", TRAINING_ERRORS)
