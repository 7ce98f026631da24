"""Draws a training run's learning curve: validation landmark RMSE against the step.

    python -m rfnet_tf.training.plot_validation --stage_dir=RUN/affinenet \\
        --out=docs/affinenet_validation.png

Reads ``validation.jsonl`` (written by the training loop, ``rfnet_tf.training.validation``)
of each ``--stage_dir`` and plots the mean and median landmark RMSE of the stage's
registration on the held-out pairs, with the unregistered input's mean as a reference;
``--metric=epe`` plots the mean end-point error against the truth instead, which stays
finite where a folding flow leaves the RMSE undefined.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from absl import app, flags

from rfnet_tf.visualize import line_plot, save_png
from rfnet_tf.training.validation import VALIDATION_LOG

flags.DEFINE_multi_string("stage_dir", None, "A training stage directory holding validation.jsonl.")
flags.DEFINE_multi_string("label", None, "A label per --stage_dir (default: the directory's name).")
flags.DEFINE_string("out", None, "The PNG to write.")
flags.DEFINE_string("title", "Validation", "Title of the plot.")
METRIC_LABELS = {"rmse": "landmark RMSE (px)", "epe": "mean end-point error (px)"}
flags.DEFINE_enum(
    "metric", "rmse", list(METRIC_LABELS),
    "rmse: landmark RMSE, mean and median; epe: mean end-point error against the truth.",
)
FLAGS = flags.FLAGS


def read_validation_log(stage_dir: str | Path) -> list[dict]:
    """The records of ``<stage_dir>/validation.jsonl`` by step; a step logged again (a
    resumed run) keeps its last record."""
    path = Path(stage_dir) / VALIDATION_LOG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no validation log (train with --validation_data_dir)")
    records = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
                records[int(record["step"])] = record
            except (ValueError, KeyError) as error:
                raise ValueError(f"{path}:{number}: not a validation record ({error})") from None
    return [records[step] for step in sorted(records)]


def learning_curve_series(
    records: list[dict], label: str = "", unregistered: bool = True, metric: str = "rmse"
) -> dict:
    """``{name: (steps, values)}``: the stage's mean and (``rmse``) median, and
    (``unregistered``) the unregistered input's mean. Records without the metric (logs
    of older code) are left out, and so are undefined (NaN) values."""
    records = [record for record in records if f"{metric}_mean" in record]
    steps = [record["step"] for record in records]
    prefix = f"{label}: " if label else ""
    series = {f"{prefix}mean": (steps, [record[f"{metric}_mean"] for record in records])}
    if metric == "rmse":
        series[f"{prefix}median"] = (steps, [record["rmse_median"] for record in records])
    if unregistered:
        series["unregistered (mean)"] = (steps, [record[f"identity_{metric}_mean"] for record in records])
    return {name: _finite_points(*points) for name, points in series.items()}


def _finite_points(steps: list, values: list) -> tuple[list, list]:
    kept = [(step, value) for step, value in zip(steps, values) if math.isfinite(value)]
    return [step for step, _ in kept], [value for _, value in kept]


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.stage_dir or not FLAGS.out:
        raise app.UsageError("--stage_dir and --out are required")
    labels = FLAGS.label or []
    if labels and len(labels) != len(FLAGS.stage_dir):
        raise app.UsageError("give one --label per --stage_dir, or none")
    series = {}
    try:
        for index, stage_dir in enumerate(FLAGS.stage_dir):
            label = labels[index] if labels else (Path(stage_dir).name if len(FLAGS.stage_dir) > 1 else "")
            # The runs validate on the same pairs: one unregistered line for all.
            records = read_validation_log(stage_dir)
            series.update(learning_curve_series(records, label, unregistered=index == 0, metric=FLAGS.metric))
    except (OSError, ValueError) as error:
        print(f"plot_validation: {error}", file=sys.stderr)
        return 2
    series = {name: points for name, points in series.items() if points[0]}
    if not series:
        print(f"plot_validation: no {FLAGS.metric} values to plot", file=sys.stderr)
        return 2
    highest = max(max(values) for _, values in series.values())
    image = line_plot(series, "training step", f"{FLAGS.title}: {METRIC_LABELS[FLAGS.metric]}",
                      y_range=(0.0, highest))
    save_png(FLAGS.out, image)
    print(f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
