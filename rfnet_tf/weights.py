"""The weights format shared by training, evaluation and export.

A weights directory holds ``rfnet.json`` (the ``RFNet`` constructor arguments, the parts
it holds and free-form provenance) and one Keras weights file per trained part:
``transnet.weights.h5``, ``affinenet.weights.h5``, ``f2m.weights.h5``. Each training
stage exports such a directory (``<stage dir>/export``) holding the parts it trained and
the frozen parts it used, so the export of the last stage is the complete model.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from absl import logging

from rfnet_tf.networks import RFNet
from rfnet_tf.networks.affinenet import HEADS
from rfnet_tf.networks.f2m import DEFORMATION_BLOCKS
from rfnet_tf.networks.refine import SIMILARITIES
from rfnet_tf.staging import staged_directory

PARTS = ("transnet", "affinenet", "f2m")
CONFIG_FILE = "rfnet.json"
CONFIG_KEYS = ("model", "parts", "provenance")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The RFNet constructor arguments stored in rfnet.json's "model" (older files may lack the
# last nine; RFNet's defaults apply): which values each takes, as a check and its words.
# An affine input of 4 px fails in TransNet's reflect padding; 8 runs.
_MODEL_VALUES = {
    "deformable": (lambda v: isinstance(v, bool), "true or false"),
    "max_displacement": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        "a number > 0",
    ),
    "affine_input_size": (lambda v: _is_int(v) and v >= 8, "an integer >= 8"),
    "coarse_refinement_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "coarse_refinement_levels": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "coarse_refinement_fine_size": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "coarse_refinement_similarity": (
        lambda v: v in SIMILARITIES,
        "one of " + ", ".join(f'"{name}"' for name in SIMILARITIES),
    ),
    "attention_window": (
        lambda v: v is None or (_is_int(v) and v >= 1),
        "null or an integer >= 1",
    ),
    "affine_head": (
        lambda v: v in HEADS,
        "one of " + ", ".join(f'"{name}"' for name in HEADS),
    ),
    "correlation_radius": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "affinenet_input_size": (
        lambda v: v is None or (_is_int(v) and v >= 8),
        "null or an integer >= 8",
    ),
    "fine_min_gain": (
        lambda v: v is None
        or (isinstance(v, (int, float)) and not isinstance(v, bool) and -2 <= v <= 2),
        "null or a number in [-2, 2]",
    ),
    "deformation_block_type": (
        lambda v: v in DEFORMATION_BLOCKS,
        "one of " + ", ".join(f'"{name}"' for name in DEFORMATION_BLOCKS),
    ),
}
MODEL_CONFIG_KEYS = tuple(_MODEL_VALUES)
EXPORT_SUBDIR = "export"


class WeightsError(ValueError):
    """A weights directory is missing, incomplete or does not fit the model."""


def weight_file(part: str) -> str:
    return f"{part}.weights.h5"


def resolve_weights_dir(path: str | os.PathLike) -> Path:
    """The weights directory at ``path`` or at ``path/export`` (a stage's directory).

    Raises:
      WeightsError: neither holds ``rfnet.json``.
    """
    path = Path(path)
    for candidate in (path, path / EXPORT_SUBDIR):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise WeightsError(
        f"{path}: no RFNet weights here (expected {CONFIG_FILE} in it or in {EXPORT_SUBDIR}/)"
    )


def read_config(directory: str | os.PathLike) -> dict:
    """The parsed and checked ``rfnet.json`` of a weights directory (``resolve_weights_dir``
    rules).

    Unknown keys (decision): under ``"model"`` they are errors, since ignoring one would
    build another network than the file describes; at the top level they are ignored with
    a warning, since they cannot change the network (a later version may add some).

    Raises:
      WeightsError: the file is unreadable or not JSON, or a key holds a value of the
        wrong type or range, or ``"model"`` holds an unknown key; the message names the
        file and the key.
    """
    path = resolve_weights_dir(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path}: unreadable ({error})") from error
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise WeightsError(f'{path}: expected a JSON object with a "model" object')
    unknown = tuple(sorted(set(config) - set(CONFIG_KEYS)))
    if unknown:
        _warn_unknown_keys(path, unknown)
    parts = config.get("parts", [])
    if not isinstance(parts, list) or not all(part in PARTS for part in parts):
        raise WeightsError(f'{path}: "parts" must be a list of {", ".join(PARTS)}; got {parts!r}')
    if not isinstance(config.get("provenance", {}), dict):
        raise WeightsError(f'{path}: "provenance" must be an object')
    for key, value in config["model"].items():
        if key not in _MODEL_VALUES:
            raise WeightsError(
                f'{path}: unknown key "model.{key}"; known: {", ".join(MODEL_CONFIG_KEYS)}'
            )
        fits, expected = _MODEL_VALUES[key]
        if not fits(value):
            raise WeightsError(f'{path}: "model.{key}" must be {expected}, got {value!r}')
    return config


@functools.cache
def _warn_unknown_keys(path: Path, keys: tuple[str, ...]) -> None:
    """Logs the ignored top-level keys once per file, however often it is read."""
    logging.warning("%s: ignoring unknown key(s) %s", path, ", ".join(keys))


def model_config(model: RFNet) -> dict:
    """The ``RFNet`` constructor arguments that rebuild ``model`` (``rfnet.json``'s
    ``model``)."""
    config = model.get_config()
    return {key: config[key] for key in MODEL_CONFIG_KEYS}


def model_from_weights(
    directory: str | os.PathLike,
    required: tuple[str, ...] = PARTS,
    overrides: dict | None = None,
) -> RFNet:
    """A new ``RFNet`` built from ``rfnet.json`` with the stored parts loaded.

    Args:
      directory: a weights directory (or a stage directory holding ``export/``).
      required: parts that must be present; others load if present.
      overrides: ``RFNet`` constructor arguments replacing the stored ones (for example
        ``{"coarse_refinement_steps": 0}``).

    Raises:
      WeightsError: a required part is missing or a file does not fit the model.
    """
    config = read_config(directory)
    model = RFNet(**dict(config["model"], **(overrides or {})))
    load_parts(model, directory, required=required)
    return model


def load_parts(
    model: RFNet, directory: str | os.PathLike, required: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """Loads every part stored in ``directory`` into ``model``; returns the parts loaded."""
    directory = resolve_weights_dir(directory)
    stored = tuple(read_config(directory).get("parts", ()))
    missing = [part for part in required if part not in stored]
    if missing:
        raise WeightsError(
            f"{directory}: holds {list(stored) or 'no parts'}, but {missing} are needed"
        )
    for part in stored:
        path = directory / weight_file(part)
        try:
            getattr(model, part).load_weights(path)
        except (OSError, ValueError) as error:
            raise WeightsError(f"{path}: cannot load {part} weights ({error})") from error
    return stored


def export_weights(
    model: RFNet,
    directory: str | os.PathLike,
    parts: tuple[str, ...],
    provenance: dict | None = None,
) -> Path:
    """Writes ``parts`` of ``model`` and ``rfnet.json`` to ``directory``, atomically.

    The files are written to a temporary sibling directory that then replaces
    ``directory``, so a reader never sees a half-written export.
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; parts are {PARTS}")
    directory = Path(directory)
    with staged_directory(directory) as staging:
        for part in parts:
            getattr(model, part).save_weights(staging / weight_file(part))
        config = {
            "model": model_config(model),
            "parts": list(parts),
            "provenance": provenance or {},
        }
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory
