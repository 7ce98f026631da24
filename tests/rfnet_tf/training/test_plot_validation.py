"""plot_validation: the validation log read back, and the curve it draws."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from rfnet_tf.training.plot_validation import learning_curve_series, read_validation_log

RECORDS = [
    {"step": 0, "rmse_mean": 80.0, "rmse_median": 70.0, "identity_rmse_mean": 80.0},
    {"step": 100, "rmse_mean": 40.0, "rmse_median": 30.0, "identity_rmse_mean": 80.0},
]


def write_log(directory, records):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_step_logged_twice_keeps_its_last_record_in_step_order(tmp_path):
    again = dict(RECORDS[1], rmse_mean=35.0)
    write_log(tmp_path, [RECORDS[1], RECORDS[0], again])
    records = read_validation_log(tmp_path)
    assert [r["step"] for r in records] == [0, 100] and records[1]["rmse_mean"] == 35.0
    series = learning_curve_series(records, "run")
    assert series["run: mean"] == ([0, 100], [80.0, 35.0])
    assert series["unregistered (mean)"][1] == [80.0, 80.0]
    assert set(learning_curve_series(records, "other", unregistered=False)) == {"other: mean", "other: median"}


def test_the_end_point_error_curve_and_undefined_values():
    """``epe`` reads the end-point errors, older records without them are left out, and a
    NaN RMSE (a folding flow) leaves a gap rather than a point."""
    records = [
        RECORDS[0],
        dict(RECORDS[1], rmse_mean=float("nan"), epe_mean=5.0, identity_epe_mean=4.0),
        dict(RECORDS[1], step=200, epe_mean=3.0, identity_epe_mean=4.0),
    ]
    epe = learning_curve_series(records, metric="epe")
    assert epe == {"mean": ([100, 200], [5.0, 3.0]), "unregistered (mean)": ([100, 200], [4.0, 4.0])}
    rmse = learning_curve_series(records)
    assert rmse["mean"] == ([0, 200], [80.0, 40.0])
    assert rmse["median"] == ([0, 100, 200], [70.0, 30.0, 30.0])


def test_a_missing_or_broken_log_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="validation.jsonl"):
        read_validation_log(tmp_path)
    (tmp_path / "validation.jsonl").write_text("{\"step\": 1}\nnot json\n")
    with pytest.raises(ValueError, match="validation.jsonl:2"):
        read_validation_log(tmp_path)


def test_the_command_writes_the_png(tmp_path):
    write_log(tmp_path / "affinenet", RECORDS)
    out = tmp_path / "curve.png"
    done = subprocess.run(
        [sys.executable, "-m", "rfnet_tf.training.plot_validation",
         f"--stage_dir={tmp_path / 'affinenet'}", f"--out={out}"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (860, 420)
    missing = subprocess.run(
        [sys.executable, "-m", "rfnet_tf.training.plot_validation",
         f"--stage_dir={tmp_path / 'none'}", f"--out={out}"],
        capture_output=True, text=True, check=False,
    )
    assert missing.returncode == 2 and "no validation log" in missing.stderr
