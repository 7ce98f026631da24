"""What train_coarse.py and train_f2m.py run, once their flags are validated."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from rfnet_tf import misalignment_flags
from rfnet_tf.colour import luma
from rfnet_tf.data import DataError, Pair, steps_per_epoch
from rfnet_tf.networks import RFNet
from rfnet_tf.networks.rfnet import resize_for_affine
from rfnet_tf.staging import DestinationError
from rfnet_tf.training.common_flags import FlagError, read_training_pairs, read_validation_pairs
from rfnet_tf.training.loop import CheckpointError, LoopConfig, NonFiniteLossError, run_stage
from rfnet_tf.training.runtime import (
    configure_cpu_devices,
    configure_mixed_precision,
    is_chief,
    make_strategy,
    save_flags,
    stage_directory,
)
from rfnet_tf.training.stages import LossWeights, Stage
from rfnet_tf.training.validation import Validation
from rfnet_tf.weights import (
    WeightsError,
    load_parts,
    model_from_weights,
    read_config,
    resolve_weights_dir,
)

# What the training scripts report in one line with exit code 2 (rfnet_tf.cli): problems
# the user can fix, and a run that cannot go on.
TRAINING_ERRORS = (
    FlagError,
    DataError,
    WeightsError,
    DestinationError,
    NonFiniteLossError,
    CheckpointError,
)


def effective_flags(script_file: str) -> dict:
    """Every flag the script and the shared training flags define, with its value."""
    by_module = flags.FLAGS.flags_by_module_dict()
    names = set()
    for module, module_flags in by_module.items():
        shared = ("train_coarse.py", "train_f2m.py", "common_flags", "misalignment_flags")
        if module.endswith(shared) or module == script_file:
            names.update(flag.name for flag in module_flags)
    return {name: flags.FLAGS[name].value for name in sorted(names)}


def resize_pair(pair: Pair, size: int) -> Pair:
    """The pair resized to ``size x size`` exactly as RFNet resizes its coarse input."""

    def resize(image):
        return resize_for_affine(tf.constant(image[None]), size)[0].numpy()

    return dataclasses.replace(pair, vis=resize(pair.vis), nir=resize(pair.nir))


def largest_valid_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a box inside which ``mask (H, W)`` is all 1.

    Greedy: while the box holds an invalid pixel, drop the border row or column with the
    most invalid pixels. Exact for the convex valid region of an affine warp up to a
    pixel or two.
    """
    top, bottom, left, right = 0, mask.shape[0], 0, mask.shape[1]
    valid = mask > 0
    while top < bottom and left < right:
        box = valid[top:bottom, left:right]
        if box.all():
            break
        losses = [
            (~box[0]).sum(),
            (~box[-1]).sum(),
            (~box[:, 0]).sum(),
            (~box[:, -1]).sum(),
        ]
        side = int(np.argmax(losses))
        if side == 0:
            top += 1
        elif side == 1:
            bottom -= 1
        elif side == 2:
            left += 1
        else:
            right -= 1
    return top, bottom, left, right


def coarse_align(pairs: list[Pair], coarse: RFNet, crop_size: int) -> list[Pair]:
    """The coarse module's registration of each pair, cut to its fully valid box."""
    aligned = []
    for index, pair in enumerate(pairs, start=1):
        vis = pair.vis if pair.vis.shape[-1] == 3 else np.repeat(pair.vis, 3, axis=-1)
        out = coarse.coarse(tf.constant(vis[None]), tf.constant(pair.nir[None]))
        mask = out["mask"].numpy()[0, ..., 0]
        top, bottom, left, right = largest_valid_box(mask)
        if bottom - top < crop_size // 2 or right - left < crop_size // 2:
            print(f"coarse alignment of {pair.name} leaves a valid box of "
                  f"{bottom - top}x{right - left} px; using the pair unaligned", flush=True)
            aligned.append(pair)
            continue
        registered = out["registered"].numpy()[0]
        aligned.append(
            dataclasses.replace(
                pair,
                vis=np.ascontiguousarray(registered[top:bottom, left:right]),
                nir=np.ascontiguousarray(pair.nir[top:bottom, left:right]),
            )
        )
        print(f"coarse-aligned {index}/{len(pairs)} {pair.name}", flush=True)
    return aligned


def _loop_config(values, stage_dir, pairs, carried, provenance, validation) -> LoopConfig:
    per_epoch = steps_per_epoch(pairs, values.batch_size, values.crops_per_image)
    total = per_epoch * values.epochs
    if values.max_steps:
        total = min(total, values.max_steps)
    return LoopConfig(
        stage_dir=stage_dir,
        total_steps=total,
        steps_per_epoch=per_epoch,
        batch_size=values.batch_size,
        learning_rate=values.learning_rate,
        decay_rate=values.decay_rate,
        clip_norm=values.clip_norm,
        log_every=values.log_every,
        checkpoint_every=values.checkpoint_every,
        jit_compile=values.jit_compile,
        carried_parts=carried,
        provenance=provenance,
        validation=validation,
        validate_every=values.validate_every,
    )


def translate_pairs(model: RFNet, pairs: list[Pair]) -> list[np.ndarray]:
    """``(H, W, 1)`` TransNet translation of each pair's VIS luma (to the NIR domain)."""
    translate = tf.function(model.transnet.translate_vis, reduce_retracing=True)
    return [
        translate(luma(tf.constant(pair.vis[None])))[0].numpy().astype(np.float32)
        for pair in pairs
    ]


def _train(values, script_file, strategy, name, pairs, model, carried, weights,
           validation=None, model_inputs=None, stage_settings=None, **dataset_options):
    """Trains stage ``name``. ``model_inputs(model)``, if given, returns more dataset
    arguments made from the model once its checkpoint is restored (e.g. translations
    by the frozen TransNet)."""
    stage_dir = stage_directory(values.model_dir, name)
    flag_values = effective_flags(script_file)
    if is_chief(strategy):
        save_flags(stage_dir, flag_values)
    provenance = {
        "data_dir": str(values.data_dir),
        "pairs": len(pairs),
        "flags": flag_values,
        "dtype_policy": keras.config.dtype_policy().name,
        "replicas": strategy.num_replicas_in_sync,
    }
    config = _loop_config(values, stage_dir, pairs, carried, provenance, validation)
    stage = Stage(name, model, weights, **(stage_settings or {}))
    make = functools.partial(
        stage.dataset,
        pairs,
        crop_size=values.crop_size,
        batch_size=values.batch_size,
        seed=values.seed,
        crops_per_image=values.crops_per_image,
        **dataset_options,
    )
    print(
        f"[{name}] {len(pairs)} pairs, {config.steps_per_epoch} steps per epoch, "
        f"training to step {config.total_steps} in {stage_dir}",
        flush=True,
    )
    from_model = {}

    def make_dataset(start):
        if model_inputs is not None and not from_model:
            from_model.update(model_inputs(model))
        return make(start_batch=start, **from_model)

    run_stage(stage, strategy, make_dataset, config)


def _setup(values):
    configure_cpu_devices(values.cpu_devices)
    configure_mixed_precision(values.mixed_precision)
    strategy = make_strategy(values.strategy)
    keras.utils.set_random_seed(values.seed)
    return strategy


def _require_weights(path: Path, required: tuple[str, ...], flag: str) -> Path:
    """The weights directory at ``path`` if it holds ``required``; else ``FlagError``."""
    try:
        directory = resolve_weights_dir(path)
        parts = read_config(directory).get("parts", [])
    except WeightsError as error:
        raise FlagError(f"{flag}: {error}") from error
    missing = [part for part in required if part not in parts]
    if missing:
        raise FlagError(f"{flag} {directory}: holds {parts}, needs {missing}")
    return directory


def _trained_attention_window(fusion_dir: Path, default: int | None) -> int | None:
    """The attention window stored with the fusion weights (``None`` in exports older
    than the option: the global max); ``default`` if there are none."""
    try:
        return read_config(fusion_dir)["model"].get("attention_window")
    except WeightsError:
        return default


def _misalignment_options(values, ranges_from, names) -> dict:
    """The pipeline's ``ranges`` and ``curriculum`` from the misalignment flags."""
    names = names + misalignment_flags.CURRICULUM_FLAGS
    given = {name: getattr(values, name) for name in names}
    try:
        return {
            "ranges": ranges_from(given),
            "curriculum": misalignment_flags.curriculum_from(given),
        }
    except ValueError as error:
        raise FlagError(str(error)) from error


def _validation(values, stage: str, training_pairs, **ranges) -> Validation | None:
    """The stage's validation on ``--validation_data_dir`` (``None`` without it)."""
    pairs = read_validation_pairs(values, training_pairs)
    if not pairs:
        return None
    return Validation(stage, pairs, values.validation_draws, **ranges)


def run_coarse(values, script_file: str) -> None:
    """train_coarse.py: TransNet and/or AffineNet."""
    root = Path(values.model_dir)
    stages = ["transnet", "affinenet"] if values.stage == "all" else [values.stage]
    transnet_dir = Path(values.transnet_dir) if values.transnet_dir else stage_directory(root, "transnet")
    affinenet_dir = stage_directory(root, "affinenet")
    if values.stage == "affinenet" and not tf.train.latest_checkpoint(affinenet_dir):
        _require_weights(transnet_dir, ("transnet",), "--transnet_dir")
    affine_options = _misalignment_options(
        values, misalignment_flags.affine_ranges_from, misalignment_flags.AFFINE_FLAGS
    )
    strategy = _setup(values)
    pairs = read_training_pairs(values)
    validation = _validation(
        values, "affinenet", pairs, affine_ranges=affine_options["ranges"]
    )
    if not values.native_resolution:
        # Misalignments are drawn in the original images' frame (their median size).
        sizes = np.array([(pair.height, pair.width) for pair in pairs])
        affine_options["sampling_frame"] = tuple(int(v) for v in np.median(sizes, axis=0))
        pairs = [resize_pair(pair, values.affine_input_size) for pair in pairs]
    weights = LossWeights(eta=values.eta)
    affine_settings = {"ncc_scales": values.ncc_scales, "affine_supervision": values.affine_supervision}
    for name in stages:
        with strategy.scope():
            model = RFNet(deformable=values.deformable, affine_input_size=values.affine_input_size)
        carried: tuple[str, ...] = ()
        if name == "affinenet":
            if not tf.train.latest_checkpoint(affinenet_dir):
                load_parts(model, transnet_dir, required=("transnet",))
            carried = ("transnet",)
        options = {}
        if name == "affinenet":
            options = dict(affine_options, validation=validation, stage_settings=affine_settings)
            if values.translation_cache:
                options["model_inputs"] = lambda model: {"translated": translate_pairs(model, pairs)}
        _train(values, script_file, strategy, name, pairs, model, carried, weights, **options)


def run_f2m(values, script_file: str) -> None:
    """train_f2m.py: F2M phase 1 (fusion) and/or phase 2 (deformation block)."""
    root = Path(values.model_dir)
    phases = ["fusion", "deformation"] if values.phase == "all" else [values.phase]
    fusion_dir = stage_directory(values.fusion_dir or root, "fusion")
    deformation_dir = stage_directory(root, "deformation")
    coarse_dir = None
    if values.coarse_dir:
        coarse_dir = _require_weights(Path(values.coarse_dir), ("transnet", "affinenet"), "--coarse_dir")
    if values.phase == "deformation" and not tf.train.latest_checkpoint(deformation_dir):
        _require_weights(fusion_dir, ("f2m",), "--fusion_dir")
    local_options = _misalignment_options(
        values, misalignment_flags.local_ranges_from, misalignment_flags.LOCAL_FLAGS
    )
    strategy = _setup(values)
    pairs = read_training_pairs(values)
    validation = _validation(values, "deformation", pairs, field_ranges=local_options["ranges"])
    if coarse_dir is not None:
        pairs = coarse_align(pairs, model_from_weights(coarse_dir, required=("transnet", "affinenet")),
                             values.crop_size)
    weights = LossWeights(
        gamma=values.gamma, delta=values.delta, lambda_smooth=values.lambda_smooth, alpha=values.alpha
    )
    carried: tuple[str, ...] = ("transnet", "affinenet") if coarse_dir is not None else ()
    # The coarse module's own configuration (its input size, deformable or not) carries over.
    model_config = read_config(coarse_dir)["model"] if coarse_dir is not None else {}
    # With windows of the crop size the attention is the paper's on every training crop,
    # and an image larger than the crops gets the statistics it was trained on.
    window = values.crop_size if values.attention_window is None else values.attention_window or None
    model_config = dict(model_config, max_displacement=values.max_displacement, attention_window=window)
    for name in phases:
        phase_config = model_config
        if name == "deformation":
            # The fusion network keeps the window it was trained with.
            phase_config = dict(model_config, attention_window=_trained_attention_window(fusion_dir, window))
        with strategy.scope():
            model = RFNet(**phase_config)
        stage_dir = stage_directory(root, name)
        if not tf.train.latest_checkpoint(stage_dir):
            if coarse_dir is not None:
                load_parts(model, coarse_dir, required=("transnet", "affinenet"))
            if name == "deformation":
                load_parts(model, fusion_dir, required=("f2m",))
        phase_carried = carried + (("f2m",) if name == "deformation" else ())
        phase_validation = validation if name == "deformation" else None
        _train(values, script_file, strategy, name, pairs, model, phase_carried, weights,
               validation=phase_validation, **local_options)
