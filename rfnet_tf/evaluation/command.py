"""evaluate.py's logic: validated settings from its flags, then the whole run.

Order (everything that can fail on bad input fails before any inference): flags, the
output directory (including a trial write beside it), the methods and what the weights
hold (``rfnet.json`` checked key by key), every input read (and misaligned, and its
size checked), the model loaded, then the evaluation. Errors a user can fix are
``INPUT_ERRORS``; ``rfnet_tf.cli`` turns each into one line and exit code 2.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from absl import logging

from rfnet_tf import misalignment_flags
from rfnet_tf.data import DataError
from rfnet_tf.data.demo import DEMO_IMAGES
from rfnet_tf.data.synthetic import MISALIGNMENT_KINDS, AffineRanges, LocalFieldRanges
from rfnet_tf.evaluation import methods as methods_lib
from rfnet_tf.evaluation import sources
from rfnet_tf.evaluation.inference import FINE_GUARDS, WeightsInfo, inspect_weights, load_predictor
from rfnet_tf.evaluation.outputs import check_out_dir
from rfnet_tf.evaluation.pipeline import (
    EvaluationError,
    Options,
    Report,
    parse_methods,
    plan_methods,
    run_evaluation,
)
from rfnet_tf.evaluation.sources import FOLDER_LAYOUTS, FOLDER_MISALIGNMENTS
from rfnet_tf.staging import DestinationError
from rfnet_tf.weights import WeightsError

INPUT_ERRORS = (DataError, WeightsError, EvaluationError, DestinationError)
SOURCES = ("pair", "data_dir", "landmarks", "demo")
# Flags that only mean something for some sources: using them elsewhere is an error
# rather than silently ignored.
_SOURCE_FLAGS = {
    "layout": ("data_dir",),
    "vis_dir": ("data_dir",),
    "nir_dir": ("data_dir",),
    "skip_bad": ("data_dir", "landmarks"),
    "exclude": ("data_dir",),
    "pairs": ("data_dir",),
    "misalign": ("data_dir", "demo"),
    "seed": ("data_dir", "demo"),
    "num_landmarks": ("data_dir", "demo"),
    "demo_images": ("demo",),
    **{
        flag: ("data_dir", "demo")
        for flag in misalignment_flags.AFFINE_FLAGS + misalignment_flags.LOCAL_FLAGS
    },
}
# Flags of a synthetic misalignment: they do not apply to pairs that carry their own.
_SYNTHETIC_FLAGS = (
    "misalign", "seed", "num_landmarks",
    *misalignment_flags.AFFINE_FLAGS, *misalignment_flags.LOCAL_FLAGS,
)
# Flags whose checked value is the setting of the same name.
_SETTINGS_AS_GIVEN = (
    "vis", "nir", "data_dir", "layout", "vis_dir", "nir_dir", "skip_bad", "landmarks_dir",
    "misalign", "seed", "num_landmarks", "paper_conventions", "checkerboard_tiles", "ecc_levels",
)
_SOURCE_OPTIONS = {
    "pair": "--vis/--nir",
    "data_dir": "--data_dir",
    "landmarks": "--landmarks_dir",
    "demo": "the demo set (no input flag)",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated settings of one evaluation (see evaluate.py's flags)."""

    source: str
    weights: Path
    weights_given: bool
    methods: tuple[str, ...]
    methods_given: bool
    out_dir: Path
    vis: str | None = None
    nir: str | None = None
    data_dir: str | None = None
    layout: str = "auto"
    synthetic_flags_given: tuple[str, ...] = ()
    vis_dir: str = "vis"
    nir_dir: str = "nir"
    skip_bad: bool = False
    exclude: tuple[str, ...] = ()
    pairs: tuple[str, ...] = ()
    landmarks_dir: str | None = None
    misalign: str = "both"
    affine_ranges: AffineRanges = AffineRanges()
    field_ranges: LocalFieldRanges = LocalFieldRanges()
    seed: int = 0
    num_landmarks: int = 5
    demo_images: tuple[str, ...] = DEMO_IMAGES
    paper_conventions: bool = Options.paper_conventions
    checkerboard_tiles: int = Options.checkerboard_tiles
    ecc_levels: int = Options.ecc_levels
    coarse_refinement_steps: int | None = None
    fine_guard: str = "stored"
    progress: bool = True


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def settings_from_flags(
    values: Mapping[str, object], present: set[str], default_weights: Path
) -> Settings:
    """Checks the flag values and their combination.

    Args:
      values: ``{flag name: value}`` of every evaluate.py flag.
      present: the flags given on the command line.
      default_weights: the weights used without ``--weights``.

    Raises:
      EvaluationError: a missing, conflicting or out-of-range flag.
    """
    given = {
        "pair": bool(values["vis"] or values["nir"]),
        "data_dir": bool(values["data_dir"]),
        "landmarks": bool(values["landmarks_dir"]),
    }
    chosen = [source for source, on in given.items() if on]
    if len(chosen) > 1:
        raise EvaluationError(
            "give one input: --vis and --nir, --data_dir, or --landmarks_dir "
            f"(got {', '.join(_SOURCE_OPTIONS[source] for source in chosen)})"
        )
    source = chosen[0] if chosen else "demo"
    if source == "pair" and not (values["vis"] and values["nir"]):
        raise EvaluationError("--vis and --nir go together: give both files of the pair")
    for flag, allowed in _SOURCE_FLAGS.items():
        if flag in present and source not in allowed:
            options = " or ".join(_SOURCE_OPTIONS[name] for name in allowed)
            raise EvaluationError(f"--{flag} applies only to {options}")
    if values["layout"] not in FOLDER_LAYOUTS:
        raise EvaluationError(f"--layout must be one of {', '.join(FOLDER_LAYOUTS)}")
    if values["misalign"] not in FOLDER_MISALIGNMENTS:
        raise EvaluationError(f"--misalign must be one of {', '.join(FOLDER_MISALIGNMENTS)}")
    synthetic_flags_given = tuple(flag for flag in _SYNTHETIC_FLAGS if flag in present)
    if values["misalign"] == "none":
        if source != "data_dir":
            raise EvaluationError("--misalign=none applies only to --data_dir")
        extra = [f"--{flag}" for flag in synthetic_flags_given if flag != "misalign"]
        if extra:
            raise EvaluationError(
                f"--misalign=none adds no misalignment, so {' and '.join(extra)} cannot apply"
            )
    minimums = (("num_landmarks", 1), ("checkerboard_tiles", 1), ("ecc_levels", 1), ("seed", 0))
    for flag, minimum in minimums:
        if values[flag] < minimum:
            raise EvaluationError(f"--{flag} must be at least {minimum}, got {values[flag]}")
    refinement = values.get("coarse_refinement_steps")
    if refinement is not None and refinement < 0:
        raise EvaluationError(f"--coarse_refinement_steps must be at least 0, got {refinement}")
    fine_guard = values.get("fine_guard", "stored")
    if fine_guard not in FINE_GUARDS:
        raise EvaluationError(f"--fine_guard must be one of {', '.join(FINE_GUARDS)}, got {fine_guard!r}")
    demo_images = _names(values["demo_images"])
    unknown = [name for name in demo_images if name not in DEMO_IMAGES]
    if not demo_images or unknown:
        raise EvaluationError(
            f"--demo_images must name some of {', '.join(DEMO_IMAGES)} "
            f"(got {values['demo_images']!r})"
        )
    if not values["out_dir"]:
        raise EvaluationError("--out_dir is empty")
    try:
        affine_ranges = misalignment_flags.affine_ranges_from(values)
        field_ranges = misalignment_flags.local_ranges_from(values)
    except ValueError as error:
        raise EvaluationError(str(error)) from error
    return Settings(
        source=source,
        weights=Path(values["weights"]) if values["weights"] else default_weights,
        weights_given=bool(values["weights"]),
        methods=parse_methods(values["methods"]),
        methods_given="methods" in present,
        out_dir=Path(values["out_dir"]),
        synthetic_flags_given=synthetic_flags_given,
        exclude=_names(values["exclude"]),
        pairs=_names(values["pairs"]),
        affine_ranges=affine_ranges,
        field_ranges=field_ranges,
        demo_images=demo_images,
        coarse_refinement_steps=refinement,
        fine_guard=fine_guard,
        **{name: values[name] for name in _SETTINGS_AS_GIVEN},
    )


def load_dataset(settings: Settings) -> sources.EvaluationSet:
    """Reads (and for synthetic sources misaligns) every input pair.

    Raises:
      EvaluationError: a flag of a synthetic misalignment given for a folder of the
        known-affine layout, whose pairs carry their own.
    """
    if settings.source == "pair":
        return sources.single_pair(settings.vis, settings.nir)
    if settings.source == "landmarks":
        return sources.landmark_folder(settings.landmarks_dir, settings.skip_bad)
    if settings.source == "data_dir":
        folder = sources.Folder(
            settings.data_dir, settings.layout, settings.vis_dir, settings.nir_dir,
            settings.skip_bad, settings.exclude, settings.pairs,
        )
        if folder.resolved_layout() == "known_affine":
            if settings.synthetic_flags_given:
                flags = " and ".join(f"--{flag}" for flag in settings.synthetic_flags_given)
                raise EvaluationError(
                    f"{flags} cannot apply to {settings.data_dir}: its pairs (known_affine "
                    "layout) carry their own misalignment and its ground truth (to register "
                    "and fuse them unscored, pass --layout=nirscene --misalign=none)"
                )
            return sources.known_affine_folder(folder)
        if settings.misalign == "none":
            return sources.unaligned_folder(folder)
        return sources.synthetic_folder(
            folder,
            settings.misalign,
            settings.seed,
            settings.num_landmarks,
            settings.affine_ranges,
            settings.field_ranges,
        )
    return sources.demo_set(
        settings.misalign,
        settings.seed,
        settings.num_landmarks,
        settings.demo_images,
        settings.affine_ranges,
        settings.field_ranges,
    )


def weights_info(settings: Settings) -> WeightsInfo:
    """What ``--weights`` (or the default weights) holds.

    Raises:
      EvaluationError: the default weights directory does not exist.
      WeightsError: the weights path holds no RFNet weights.
    """
    if not settings.weights_given and not settings.weights.exists():
        raise EvaluationError(
            f"no trained weights at {settings.weights}: train RFNet first (train_coarse.py, "
            "then train_f2m.py) or pass --weights=DIR (a weights directory, a training stage "
            "directory or a SavedModel)"
        )
    return inspect_weights(settings.weights)


def execute(settings: Settings, extra_config: dict | None = None) -> Report:
    """Runs the whole evaluation described by ``settings``; returns the report."""
    check_out_dir(settings.out_dir)
    requested_model = bool(set(settings.methods) & set(methods_lib.MODEL_CALLS))
    info = weights_info(settings) if requested_model else None
    plan = plan_methods(settings.methods, info, settings.methods_given)
    for method, reason in plan.not_evaluated.items():
        logging.warning("%s is not evaluated: %s", method, reason)
    dataset = load_dataset(settings)
    predictor = (
        load_predictor(info, settings.coarse_refinement_steps, settings.fine_guard)
        if plan.needs_model
        else None
    )
    options = Options(
        paper_conventions=settings.paper_conventions,
        checkerboard_tiles=settings.checkerboard_tiles,
        ecc_levels=settings.ecc_levels,
        progress=settings.progress,
    )
    return run_evaluation(dataset, predictor, plan, options, settings.out_dir, extra_config)


def default_weights_dir(script_file: str | os.PathLike) -> Path:
    """The repository's ``weights/`` directory, next to the script (not the cwd)."""
    return Path(script_file).resolve().parent / "weights"
