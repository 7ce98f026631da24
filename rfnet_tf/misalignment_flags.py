"""absl flags of the synthetic misalignment, shared by the training scripts and evaluate.py.

Their defaults are those of :class:`~rfnet_tf.data.synthetic.AffineRanges`,
:class:`~rfnet_tf.data.synthetic.LocalFieldRanges` and
:class:`~rfnet_tf.data.synthetic.Curriculum` (one place for each). The ``*_from``
functions turn the flag values (a mapping from flag name to value) into those objects
and raise ``ValueError`` naming the flag when a value cannot work.
"""

from __future__ import annotations

from collections.abc import Mapping

from absl import flags

from rfnet_tf.data.synthetic import AffineRanges, Curriculum, LocalFieldRanges

AFFINE_FLAGS = ("max_rotation", "scale_range", "max_shear", "max_translation")
LOCAL_FLAGS = ("local_displacement", "local_control_spacing")
CURRICULUM_FLAGS = ("curriculum_steps", "curriculum_start", "curriculum_first_step")

_AFFINE = AffineRanges()
_LOCAL = LocalFieldRanges()
_CURRICULUM = Curriculum()


def define_affine_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_float(
        "max_rotation", _AFFINE.max_rotation_deg,
        "Synthetic affine misalignment: rotation U(-max, max), degrees.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "scale_range", [str(value) for value in _AFFINE.scale_range],
        "Synthetic affine misalignment: isotropic scale, log-uniform on LOW,HIGH.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "max_shear", _AFFINE.max_shear,
        "Synthetic affine misalignment: shear U(-max, max).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "max_translation", _AFFINE.max_translation,
        "Synthetic affine misalignment: shift U(-max, max) as a fraction of each side.",
        flag_values=flag_values,
    )


def define_local_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    low, high = _LOCAL.max_displacement_range
    size = f"{_LOCAL.reference_size}x{_LOCAL.reference_size}"
    flags.DEFINE_list(
        "local_displacement", [str(low), str(high)],
        "Synthetic local misalignment: the field's largest displacement is U(LOW, HIGH) px "
        f"at {size} (scaled with the image's smaller side).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "local_control_spacing", _LOCAL.control_spacing,
        "Synthetic local misalignment: spacing of its random control points, px at "
        f"{size} (larger = smoother).",
        flag_values=flag_values,
    )


def define_curriculum_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_integer(
        "curriculum_steps", _CURRICULUM.steps,
        "Grow the synthetic misalignment's ranges linearly over this many steps, from "
        "--curriculum_start of them to all of them (0: the full ranges from the start).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "curriculum_start", _CURRICULUM.start,
        "With --curriculum_steps: the share of the ranges at --curriculum_first_step.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "curriculum_first_step", _CURRICULUM.first_step,
        "With --curriculum_steps: the training step at which the ranges start to grow "
        "(the step of the checkpoint a run was forked from).",
        flag_values=flag_values,
    )


def _pair_of_floats(values: Mapping[str, object], name: str) -> tuple[float, float]:
    text = values[name]
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        low, high = (float(item) for item in items)
    except ValueError:
        raise ValueError(f"--{name} takes two numbers LOW,HIGH, got {text!r}") from None
    return low, high


def _checked(make, flag_names, values):
    try:
        return make()
    except ValueError as error:
        given = ", ".join(f"--{name}={values[name]}" for name in flag_names)
        raise ValueError(f"{given}: {error}") from None


def affine_ranges_from(values: Mapping[str, object]) -> AffineRanges:
    """:class:`AffineRanges` from the values of :data:`AFFINE_FLAGS`."""
    scale_range = _pair_of_floats(values, "scale_range")
    return _checked(
        lambda: AffineRanges(
            max_rotation_deg=float(values["max_rotation"]),
            scale_range=scale_range,
            max_shear=float(values["max_shear"]),
            max_translation=float(values["max_translation"]),
        ),
        AFFINE_FLAGS,
        values,
    )


def local_ranges_from(values: Mapping[str, object]) -> LocalFieldRanges:
    """:class:`LocalFieldRanges` from the values of :data:`LOCAL_FLAGS`."""
    displacement = _pair_of_floats(values, "local_displacement")
    return _checked(
        lambda: LocalFieldRanges(
            max_displacement_range=displacement,
            control_spacing=float(values["local_control_spacing"]),
        ),
        LOCAL_FLAGS,
        values,
    )


def curriculum_from(values: Mapping[str, object]) -> Curriculum:
    """:class:`Curriculum` from the values of :data:`CURRICULUM_FLAGS`."""
    return _checked(
        lambda: Curriculum(
            int(values["curriculum_steps"]),
            float(values["curriculum_start"]),
            int(values["curriculum_first_step"]),
        ),
        CURRICULUM_FLAGS,
        values,
    )
