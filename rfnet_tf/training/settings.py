"""The training scripts' settings: frozen dataclasses built once from their validated
flags, so that what runs (``rfnet_tf.training.scripts``) sees typed values, not absl's
flag object.

The flags' defaults live where they are defined (``common_flags``, the scripts, and
the objects they come from: ``LoopConfig``, ``losses.LossWeights``, ``AffineSettings``,
the misalignment ranges); these classes have none of their own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tensorflow as tf
from absl import flags

from losses import LossWeights
from rfnet_tf import misalignment_flags
from rfnet_tf.data.synthetic import AffineRanges, Curriculum, LocalFieldRanges
from rfnet_tf.training.common_flags import FlagError
from rfnet_tf.training.runtime import stage_directory
from rfnet_tf.training.stages import AffineSettings, DeformationSettings
from rfnet_tf.weights import (
    CONFIG_FILE,
    EXPORT_SUBDIR,
    WeightsError,
    read_config,
    resolve_weights_dir,
)

# The modules whose flags a run records (flags.json, the export's provenance).
_RECORDED_FLAG_MODULES = ("train_coarse.py", "train_f2m.py", "common_flags", "misalignment_flags")


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """The settings both scripts share (``common_flags``); see their flags' help.

    ``flag_values`` holds every flag of the script and the shared flags with its value,
    as recorded beside the checkpoints and in the export.
    """

    data_dir: str
    layout: str
    vis_dir: str
    nir_dir: str
    skip_bad: bool
    exclude: tuple[str, ...]
    crop_size: int
    batch_size: int
    crops_per_image: int
    epochs: int
    learning_rate: float
    decay_rate: float
    clip_norm: float
    model_dir: Path
    seed: int
    max_steps: int
    checkpoint_every: int
    log_every: int
    strategy: str
    cpu_devices: int
    mixed_precision: bool
    jit_compile: bool
    validation_data_dir: str
    validation_pairs: tuple[str, ...]
    validation_draws: int
    validate_every: int
    flag_values: dict

    @classmethod
    def from_flags(cls, values, script_file: str) -> TrainingSettings:
        names = [field.name for field in dataclasses.fields(cls) if field.name != "flag_values"]
        given = {name: getattr(values, name) for name in names}
        given.update(
            exclude=tuple(values.exclude),
            validation_pairs=tuple(values.validation_pairs),
            model_dir=Path(values.model_dir),
        )
        return cls(**given, flag_values=effective_flags(script_file))


@dataclasses.dataclass(frozen=True)
class Misalignment:
    """The pipeline's synthetic misalignment: its ``ranges`` and ``curriculum``."""

    ranges: AffineRanges | LocalFieldRanges
    curriculum: Curriculum

    def options(self) -> dict:
        """The pipeline's keyword arguments."""
        return {"ranges": self.ranges, "curriculum": self.curriculum}

    @classmethod
    def from_flags(cls, values, ranges_from, names) -> Misalignment:
        names = names + misalignment_flags.CURRICULUM_FLAGS
        given = {name: getattr(values, name) for name in names}
        try:
            return cls(ranges_from(given), misalignment_flags.curriculum_from(given))
        except ValueError as error:
            raise FlagError(str(error)) from error


@dataclasses.dataclass(frozen=True)
class CoarseSettings:
    """train_coarse.py's settings.

    Attributes:
      common: the shared settings.
      stages: the stages to train, in order.
      weights: the loss weights (``eta``).
      affine: the AffineNet stage's settings.
      affine_input_size, native_resolution, translation_cache, deformable, affine_head:
        the flags.
      training_zooms: the pairs are trained on resized to ``affine_input_size`` times
        each of these (``--training_zooms``).
      transnet_dir: where TransNet's weights for the AffineNet stage are
        (:func:`stage_weights`; found when the stage starts, after a TransNet stage
        of the same run).
      misalignment: the synthetic affine misalignment.
    """

    common: TrainingSettings
    stages: tuple[str, ...]
    weights: LossWeights
    affine: AffineSettings
    affine_input_size: int
    native_resolution: bool
    translation_cache: bool
    deformable: bool
    affine_head: str
    training_zooms: tuple[float, ...]
    transnet_dir: Path
    misalignment: Misalignment

    @classmethod
    def from_flags(cls, values, script_file: str) -> CoarseSettings:
        """Raises ``FlagError`` for weights or misalignment flags that cannot work."""
        common = TrainingSettings.from_flags(values, script_file)
        transnet_dir = Path(values.transnet_dir or common.model_dir)
        if values.stage == "affinenet":
            _check_earlier_stage(common, "affinenet", transnet_dir, "transnet", ("transnet",))
        return cls(
            common=common,
            stages=("transnet", "affinenet") if values.stage == "all" else (values.stage,),
            weights=LossWeights(eta=values.eta),
            affine=AffineSettings(
                values.ncc_scales, values.affine_supervision, values.overlap_weighted_ncc
            ),
            affine_input_size=values.affine_input_size,
            native_resolution=values.native_resolution,
            translation_cache=values.translation_cache,
            deformable=values.deformable,
            affine_head=values.affine_head,
            training_zooms=tuple(float(zoom) for zoom in values.training_zooms),
            transnet_dir=transnet_dir,
            misalignment=Misalignment.from_flags(
                values, misalignment_flags.affine_ranges_from, misalignment_flags.AFFINE_FLAGS
            ),
        )


@dataclasses.dataclass(frozen=True)
class F2MSettings:
    """train_f2m.py's settings.

    Attributes:
      common: the shared settings.
      phases: the phases to train, in order.
      weights: the loss weights (``gamma``, ``delta``, ``lambda_smooth``, ``alpha``).
      coarse_dir: the coarse module's weights directory, or ``None``.
      fusion_dir: where the fusion phase's weights are (:func:`stage_weights`; found
        when the deformation phase starts, after a fusion phase of the same run).
      max_displacement: the flag.
      deformation_block_type: F2M's deformation block, the flag.
      attention_window: the attention's window for the fusion phase (``None``: the
        global max): ``--attention_window``, by default ``--crop_size``.
      misalignment: the synthetic local misalignment.
      deformation: the deformation phase's settings.
    """

    common: TrainingSettings
    phases: tuple[str, ...]
    weights: LossWeights
    coarse_dir: Path | None
    fusion_dir: Path
    max_displacement: float
    deformation_block_type: str
    attention_window: int | None
    misalignment: Misalignment
    deformation: DeformationSettings

    @classmethod
    def from_flags(cls, values, script_file: str) -> F2MSettings:
        """Raises ``FlagError`` for weights or misalignment flags that cannot work."""
        common = TrainingSettings.from_flags(values, script_file)
        coarse_dir = None
        if values.coarse_dir:
            coarse_dir = stage_weights(
                values.coarse_dir, "affinenet", ("transnet", "affinenet"), "--coarse_dir"
            )
        fusion_dir = Path(values.fusion_dir or common.model_dir)
        if values.phase == "deformation":
            _check_earlier_stage(common, "deformation", fusion_dir, "fusion", ("f2m",))
        # With windows of the crop size the attention is the paper's on every training
        # crop, and an image larger than the crops gets the statistics it was trained on.
        window = values.attention_window
        return cls(
            common=common,
            phases=("fusion", "deformation") if values.phase == "all" else (values.phase,),
            weights=LossWeights(
                gamma=values.gamma, delta=values.delta, lambda_smooth=values.lambda_smooth,
                alpha=values.alpha,
            ),
            coarse_dir=coarse_dir,
            fusion_dir=fusion_dir,
            max_displacement=values.max_displacement,
            deformation_block_type=values.deformation_block_type,
            attention_window=common.crop_size if window is None else window or None,
            misalignment=Misalignment.from_flags(
                values, misalignment_flags.local_ranges_from, misalignment_flags.LOCAL_FLAGS
            ),
            deformation=DeformationSettings(
                values.subpixel_jitter, values.flow_supervision, values.batch_norm_batches,
                values.supervised_only,
            ),
        )


def effective_flags(script_file: str) -> dict:
    """Every flag the script and the shared training flags define, with its value."""
    by_module = flags.FLAGS.flags_by_module_dict()
    names = set()
    for module, module_flags in by_module.items():
        if module.endswith(_RECORDED_FLAG_MODULES) or module == script_file:
            names.update(flag.name for flag in module_flags)
    return {name: flags.FLAGS[name].value for name in sorted(names)}


def _check_earlier_stage(
    common: TrainingSettings, stage: str, path: Path, earlier: str, required: tuple[str, ...]
) -> None:
    """Before anything starts: ``stage``, run alone and without a checkpoint to resume,
    needs the ``earlier`` stage's weights at ``path`` (its ``--<earlier>_dir`` flag)."""
    if not tf.train.latest_checkpoint(stage_directory(common.model_dir, stage)):
        stage_weights(path, earlier, required, f"--{earlier}_dir")


def stage_weights(path: str | Path, stage: str, required: tuple[str, ...], flag: str) -> Path:
    """The weights directory of an earlier stage's output, named by a flag such as
    ``--transnet_dir``, ``--coarse_dir`` or ``--fusion_dir``.

    ``path`` may be the stage's directory (``<model_dir>/<stage>``, holding
    ``export/``), a weights directory (``rfnet.json`` and the parts), or the model
    directory holding the stage's directory: ``path`` is tried first, then
    ``path/<stage>`` (each as itself or its ``export/``).

    Raises:
      FlagError: neither holds weights, or they lack a ``required`` part.
    """
    path = Path(path)
    for candidate in (path, path / stage):
        try:
            directory = resolve_weights_dir(candidate)
        except WeightsError:
            continue
        try:
            parts = read_config(directory).get("parts", [])
        except WeightsError as error:
            raise FlagError(f"{flag}: {error}") from error
        missing = [part for part in required if part not in parts]
        if missing:
            raise FlagError(f"{flag} {directory}: holds {parts}, needs {missing}")
        return directory
    raise FlagError(
        f"{flag} {path}: no RFNet weights here nor in {path / stage} (expected {CONFIG_FILE} "
        f"in one of them or in its {EXPORT_SUBDIR}/: pass the {stage} stage's directory, its "
        "weights directory, or the model directory holding it)"
    )
