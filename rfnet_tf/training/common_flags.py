"""absl flags shared by train_coarse.py and train_f2m.py, and their validation."""

from __future__ import annotations

from pathlib import Path

from absl import flags, logging

from rfnet_tf.data import detect_layout, read_dataset
from rfnet_tf.data.io import LAYOUTS
from rfnet_tf.data.splits import select_pairs
from rfnet_tf.staging import writable_ancestor
from rfnet_tf.training.loop import LoopConfig
from rfnet_tf.training.runtime import STRATEGIES

# Layouts that are no training data, and why.
NOT_TRAINING_DATA = {
    "known_affine": (
        "the known-affine benchmark, whose NIR images are misaligned by stored affines "
        "(an evaluation set: evaluate.py --data_dir); training needs aligned pairs"
    ),
}


class FlagError(ValueError):
    """A flag value that cannot work; the script prints it on one line and exits 2
    (``rfnet_tf.cli``)."""


def define_common_flags(default_model_dir: str, default_epochs: int) -> None:
    flags.DEFINE_string("data_dir", None, "Folder of aligned training pairs (any layout the readers support).")
    flags.DEFINE_enum("layout", "auto", LAYOUTS, "Layout of --data_dir; 'auto' detects it.")
    flags.DEFINE_string("vis_dir", "vis", "Sub-folder of the visible images (layout 'pairs').")
    flags.DEFINE_string("nir_dir", "nir", "Sub-folder of the NIR images (layout 'pairs'; 'ir' for RoadScene).")
    flags.DEFINE_bool("skip_bad", False, "Skip unreadable or mismatched pairs (listed) instead of failing.")
    flags.DEFINE_list(
        "exclude", [],
        "Pair names to leave out (e.g. pairs known not to be aligned); split names of "
        "rfnet_tf.data.splits stand for their pairs (country_validation, country_not_aligned, "
        "vis_nir_not_aligned).",
    )
    flags.DEFINE_integer("crop_size", 384, "Side of the random square training crops, pixels.")
    flags.DEFINE_integer("batch_size", 4, "Global batch size (split across replicas).")
    flags.DEFINE_integer("crops_per_image", 1, "Random crops of each pair per epoch.")
    flags.DEFINE_integer("epochs", default_epochs, "Epochs of each stage.")
    flags.DEFINE_float("learning_rate", LoopConfig.learning_rate, "Initial Adam learning rate.")
    flags.DEFINE_float("decay_rate", LoopConfig.decay_rate, "Learning-rate factor per epoch (exponential decay).")
    flags.DEFINE_float("clip_norm", LoopConfig.clip_norm, "Clip the gradients' global norm to this (0: no clipping).")
    flags.DEFINE_string("model_dir", default_model_dir, "Where each stage keeps checkpoints, flags, events and export/.")
    flags.DEFINE_integer("seed", 0, "Seed of the data stream and of the initial weights.")
    flags.DEFINE_integer("max_steps", 0, "Stop each stage after this many steps (0: the full schedule).")
    flags.DEFINE_integer("checkpoint_every", LoopConfig.checkpoint_every, "Steps between checkpoints and image summaries.")
    flags.DEFINE_integer("log_every", LoopConfig.log_every, "Steps between progress lines and scalar summaries.")
    flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy.")
    flags.DEFINE_integer("cpu_devices", 1, "Logical CPU devices to create (mirrored training without GPUs).")
    flags.DEFINE_bool("mixed_precision", False, "mixed_float16 on GPUs, mixed_bfloat16 on CPUs.")
    flags.DEFINE_bool("jit_compile", LoopConfig.jit_compile, "Compile the training step with XLA.")
    flags.DEFINE_string(
        "validation_data_dir", "",
        "Aligned pairs that the run never trains on: the AffineNet and deformation stages "
        "measure their landmark RMSE on them, misaligned synthetically, every "
        "--validate_every steps (TensorBoard and <stage dir>/validation.jsonl).",
    )
    flags.DEFINE_list(
        "validation_pairs", [],
        "Pair names (or split names, e.g. country_validation) of --validation_data_dir "
        "to validate on (default: all).",
    )
    flags.DEFINE_integer("validation_draws", 2, "Synthetic misalignments per validation pair.")
    flags.DEFINE_integer("validate_every", LoopConfig.validate_every, "Steps between validations.")


def quiet_tensorflow_logs() -> None:
    """Shows TensorFlow's Python INFO lines (checkpoint internals) only on request
    (``--verbosity=0``); warnings and the scripts' own progress stay visible."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def validate_common_flags(values) -> None:
    """Raises ``FlagError`` for values that cannot work, before anything starts, and
    ``DestinationError`` for a ``--model_dir`` that cannot be written."""
    if not values.data_dir:
        raise FlagError("--data_dir is required: a folder of aligned VIS/NIR pairs")
    if not Path(values.data_dir).is_dir():
        raise FlagError(f"--data_dir {values.data_dir}: no such folder")
    for name in ("crop_size", "batch_size", "crops_per_image", "epochs", "checkpoint_every",
                 "log_every", "cpu_devices", "validation_draws", "validate_every"):
        if getattr(values, name) < 1:
            raise FlagError(f"--{name} must be at least 1, got {getattr(values, name)}")
    if values.crop_size < 16:
        raise FlagError(f"--crop_size must be at least 16, got {values.crop_size}")
    if values.max_steps < 0:
        raise FlagError(f"--max_steps must be >= 0, got {values.max_steps}")
    if not values.learning_rate > 0:
        raise FlagError(f"--learning_rate must be positive, got {values.learning_rate}")
    if values.clip_norm < 0:
        raise FlagError(f"--clip_norm must be >= 0, got {values.clip_norm}")
    if not 0 < values.decay_rate <= 1:
        raise FlagError(f"--decay_rate must be in (0, 1], got {values.decay_rate}")
    if values.cpu_devices > 1 and values.strategy != "mirrored":
        raise FlagError("--cpu_devices > 1 only makes sense with --strategy=mirrored")
    if values.validation_data_dir and not Path(values.validation_data_dir).is_dir():
        raise FlagError(f"--validation_data_dir {values.validation_data_dir}: no such folder")
    if values.validation_pairs and not values.validation_data_dir:
        raise FlagError("--validation_pairs needs --validation_data_dir")
    writable_ancestor(values.model_dir)


def read_validation_pairs(values, training_pairs):
    """The ``--validation_pairs`` of ``--validation_data_dir`` (none without it).

    Raises:
      DataError: bad files or unknown names.
      FlagError: a validation pair that is also a training pair (the same image files).
    """
    if not values.validation_data_dir:
        return []
    pairs = select_pairs(
        _read_aligned(values.validation_data_dir, "auto", "--validation_data_dir"),
        only=values.validation_pairs,
        where=values.validation_data_dir,
    )
    trained = {Path(pair.vis_path).resolve() for pair in training_pairs if pair.vis_path}
    shared = [pair.name for pair in pairs if pair.vis_path and Path(pair.vis_path).resolve() in trained]
    if shared:
        raise FlagError(f"validation pairs that are also training pairs: {', '.join(shared)}")
    return pairs


def read_training_pairs(values):
    """The pairs of ``--data_dir`` but ``--exclude``; ``DataError`` messages name the bad files."""
    pairs = _read_aligned(
        values.data_dir, values.layout, "--data_dir", values.vis_dir, values.nir_dir, values.skip_bad
    )
    return select_pairs(pairs, exclude=values.exclude, where=values.data_dir)


def _read_aligned(root, layout, flag, vis_dir="vis", nir_dir="nir", skip_bad=False):
    """``read_dataset`` of a folder of training data; ``FlagError`` for a layout of
    :data:`NOT_TRAINING_DATA` (given, or detected for ``"auto"``)."""
    if layout == "auto":
        layout = detect_layout(root, vis_dir, nir_dir)
    if layout in NOT_TRAINING_DATA:
        raise FlagError(f"{flag} {root}: layout {layout!r} is {NOT_TRAINING_DATA[layout]}")
    return read_dataset(root, layout=layout, vis_dir=vis_dir, nir_dir=nir_dir, skip_bad=skip_bad)
