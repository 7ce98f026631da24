"""What train_coarse.py and train_f2m.py run, once their flags are validated and turned
into settings (``rfnet_tf.training.settings``)."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from rfnet_tf.data import DataError, Stream, steps_per_epoch
from rfnet_tf.data.preparation import coarse_align, median_size, resized_copies, translate_pairs
from rfnet_tf.networks import RFNet
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
from rfnet_tf.training.settings import CoarseSettings, F2MSettings, TrainingSettings, stage_weights
from rfnet_tf.training.stages import Stage, TrainingStage
from rfnet_tf.training.validation import Validation
from rfnet_tf.weights import WeightsError, load_parts, model_from_weights, read_config

# translate_pairs is also used from here by benchmarks/bench_train.py.
__all__ = ["TRAINING_ERRORS", "run_coarse", "run_f2m", "translate_pairs"]

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


def _loop_config(settings: TrainingSettings, stage_dir, pairs, carried, provenance, validation) -> LoopConfig:
    per_epoch = steps_per_epoch(pairs, settings.batch_size, settings.crops_per_image)
    total = per_epoch * settings.epochs
    if settings.max_steps:
        total = min(total, settings.max_steps)
    # The loop's settings that are flags (batch size, learning rate, ...) by their names.
    from_flags = {
        field.name: getattr(settings, field.name)
        for field in dataclasses.fields(LoopConfig)
        if hasattr(settings, field.name)
    }
    return LoopConfig(
        stage_dir=stage_dir, total_steps=total, steps_per_epoch=per_epoch, carried_parts=carried,
        provenance=provenance, validation=validation, **from_flags,
    )


def _train(settings: TrainingSettings, strategy, stage: TrainingStage, pairs, carried,
           validation=None, model_inputs=None, **dataset_options):
    """Trains ``stage`` on ``pairs``, exporting its parts with the ``carried`` ones.
    ``model_inputs(model)``, if given, returns more dataset arguments made from the model
    once its checkpoint is restored (e.g. translations by the frozen TransNet)."""
    name = stage.name
    stage_dir = stage_directory(settings.model_dir, name)
    if is_chief(strategy):
        save_flags(stage_dir, settings.flag_values)
    provenance = {
        "data_dir": str(settings.data_dir),
        "pairs": len(pairs),
        "flags": settings.flag_values,
        "dtype_policy": keras.config.dtype_policy().name,
        "replicas": strategy.num_replicas_in_sync,
    }
    config = _loop_config(settings, stage_dir, pairs, carried, provenance, validation)
    stream = Stream(crop_size=settings.crop_size, batch_size=settings.batch_size,
                    seed=settings.seed, crops_per_image=settings.crops_per_image)
    print(
        f"[{name}] {len(pairs)} pairs, {config.steps_per_epoch} steps per epoch, "
        f"training to step {config.total_steps} in {stage_dir}",
        flush=True,
    )
    from_model = {}

    def make_dataset(start):
        if model_inputs is not None and not from_model:
            from_model.update(model_inputs(stage.model))
        resumed = dataclasses.replace(stream, start_batch=start)
        return stage.dataset(pairs, resumed, **dataset_options, **from_model)

    run_stage(stage, strategy, make_dataset, config)


def _setup(settings: TrainingSettings):
    configure_cpu_devices(settings.cpu_devices)
    configure_mixed_precision(settings.mixed_precision)
    strategy = make_strategy(settings.strategy)
    keras.utils.set_random_seed(settings.seed)
    return strategy


def _trained_attention_window(fusion_dir, default: int | None) -> int | None:
    """The attention window stored with the fusion weights (``None`` in exports older
    than the option: the global max); ``default`` if there are none."""
    try:
        directory = stage_weights(fusion_dir, "fusion", ("f2m",), "--fusion_dir")
    except FlagError:
        return default
    return read_config(directory)["model"].get("attention_window")


def _validation(settings: TrainingSettings, stage: str, training_pairs, **ranges) -> Validation | None:
    """The stage's validation on ``--validation_data_dir`` (``None`` without it)."""
    pairs = read_validation_pairs(settings, training_pairs)
    if not pairs:
        return None
    return Validation(stage, pairs, settings.validation_draws, **ranges)


def run_coarse(settings: CoarseSettings) -> None:
    """train_coarse.py: TransNet and/or AffineNet."""
    common = settings.common
    affinenet_dir = stage_directory(common.model_dir, "affinenet")
    affine_options = settings.misalignment.options()
    strategy = _setup(common)
    pairs = read_training_pairs(common)
    validation = _validation(
        common, "affinenet", pairs, affine_ranges=settings.misalignment.ranges
    )
    if not settings.native_resolution:
        # Misalignments are drawn in the original images' frame (their median size).
        affine_options["sampling_frame"] = median_size(pairs)
        pairs = resized_copies(pairs, settings.affine_input_size, settings.training_zooms)
    for name in settings.stages:
        with strategy.scope():
            model = RFNet(
                deformable=settings.deformable,
                affine_input_size=settings.affine_input_size,
                affine_head=settings.affine_head,
            )
        carried: tuple[str, ...] = ()
        options = {}
        if name == "affinenet":
            if not tf.train.latest_checkpoint(affinenet_dir):
                transnet_dir = stage_weights(
                    settings.transnet_dir, "transnet", ("transnet",), "--transnet_dir"
                )
                load_parts(model, transnet_dir, required=("transnet",))
            carried = ("transnet",)
            options = dict(affine_options, validation=validation)
            if settings.translation_cache:
                options["model_inputs"] = lambda model: {"translated": translate_pairs(model, pairs)}
        stage_settings = dataclasses.asdict(settings.affine) if name == "affinenet" else {}
        stage = Stage(name, model, settings.weights, **stage_settings)
        _train(common, strategy, stage, pairs, carried, **options)


def _load_fusion_weights(model: RFNet, fusion_dir) -> None:
    """F2M's fusion variables from ``fusion_dir``, the deformation block kept as
    initialised (zero flow), so that phase 2 starts where the paper's does, also from
    weights whose block was trained before (e.g. the shipped ``weights/``) or is of
    another type. The coarse parts come from ``--coarse_dir`` alone."""
    stored = model_from_weights(fusion_dir, required=("f2m",))
    for target, source in zip(model.f2m.fusion_variables, stored.f2m.fusion_variables, strict=True):
        target.assign(source)


def run_f2m(settings: F2MSettings) -> None:
    """train_f2m.py: F2M phase 1 (fusion) and/or phase 2 (deformation block)."""
    common = settings.common
    coarse_dir = settings.coarse_dir
    local_options = settings.misalignment.options()
    strategy = _setup(common)
    pairs = read_training_pairs(common)
    validation = _validation(common, "deformation", pairs, field_ranges=settings.misalignment.ranges)
    if coarse_dir is not None:
        pairs = coarse_align(pairs, model_from_weights(coarse_dir, required=("transnet", "affinenet")),
                             common.crop_size)
    carried: tuple[str, ...] = ("transnet", "affinenet") if coarse_dir is not None else ()
    # The coarse module's own configuration (its input size, deformable or not, its head)
    # carries over.
    model_config = read_config(coarse_dir)["model"] if coarse_dir is not None else {}
    window = settings.attention_window
    model_config = dict(
        model_config,
        max_displacement=settings.max_displacement,
        attention_window=window,
        deformation_block_type=settings.deformation_block_type,
    )
    for name in settings.phases:
        phase_config = model_config
        if name == "deformation":
            # The fusion network keeps the window it was trained with.
            trained_window = _trained_attention_window(settings.fusion_dir, window)
            phase_config = dict(model_config, attention_window=trained_window)
        with strategy.scope():
            model = RFNet(**phase_config)
        if not tf.train.latest_checkpoint(stage_directory(common.model_dir, name)):
            if coarse_dir is not None:
                load_parts(model, coarse_dir, required=("transnet", "affinenet"))
            if name == "deformation":
                fusion_dir = stage_weights(settings.fusion_dir, "fusion", ("f2m",), "--fusion_dir")
                _load_fusion_weights(model, fusion_dir)
        phase_carried = carried + (("f2m",) if name == "deformation" else ())
        phase_validation = validation if name == "deformation" else None
        phase_settings = dataclasses.asdict(settings.deformation) if name == "deformation" else {}
        stage = Stage(name, model, settings.weights, **phase_settings)
        _train(common, strategy, stage, pairs, phase_carried, validation=phase_validation,
               **local_options)
