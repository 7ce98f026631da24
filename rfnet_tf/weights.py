"""The weights format shared by training, evaluation and export.

A weights directory holds ``rfnet.json`` (the ``RFNet`` constructor arguments, the parts
it holds and free-form provenance) and one Keras weights file per trained part:
``transnet.weights.h5``, ``affinenet.weights.h5``, ``f2m.weights.h5``. Each training
stage exports such a directory (``<stage dir>/export``) holding the parts it trained and
the frozen parts it used, so the export of the last stage is the complete model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rfnet_tf.networks import RFNet
from rfnet_tf.staging import staged_directory

PARTS = ("transnet", "affinenet", "f2m")
CONFIG_FILE = "rfnet.json"
# The RFNet constructor arguments stored in rfnet.json (older files may lack the last three;
# RFNet's defaults apply).
MODEL_CONFIG_KEYS = (
    "deformable",
    "max_displacement",
    "affine_input_size",
    "coarse_refinement_steps",
    "coarse_refinement_levels",
    "attention_window",
)
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
    """The parsed ``rfnet.json`` of a weights directory (``resolve_weights_dir`` rules)."""
    path = resolve_weights_dir(directory) / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path}: unreadable ({error})") from error


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
