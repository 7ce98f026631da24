"""The training loop: checkpoints and resume, exports, events, non-finite losses."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from rfnet_tf.data import Stream, affinenet_dataset, transnet_dataset
from rfnet_tf.networks import RFNet
from rfnet_tf.training.loop import (
    CheckpointError,
    LoopConfig,
    NonFiniteLossError,
    run_stage,
    weights_digest,
)
from rfnet_tf.training.stages import Stage
from rfnet_tf.weights import model_from_weights

from .conftest import BATCH, CROP

DATASETS = {"transnet": transnet_dataset, "affinenet": affinenet_dataset}
STRATEGY = tf.distribute.get_strategy()


def fresh_model() -> RFNet:
    keras.utils.set_random_seed(0)
    return RFNet(affine_input_size=CROP)


def run(name, model, stage_dir, pairs, total_steps, checkpoint_every=2, **options):
    stream = Stream(crop_size=CROP, batch_size=BATCH, seed=0)
    config = LoopConfig(
        stage_dir=stage_dir,
        total_steps=total_steps,
        steps_per_epoch=2,
        batch_size=BATCH,
        log_every=1,
        checkpoint_every=checkpoint_every,
        **options,
    )
    out = io.StringIO()

    def make_dataset(start):
        return DATASETS[name](pairs, dataclasses.replace(stream, start_batch=start))

    terms = run_stage(Stage(name, model), STRATEGY, make_dataset, config, out)
    return terms, out.getvalue()


def test_resumed_run_equals_an_uninterrupted_one(training_pairs, tmp_path):
    """4 steps in one run == 2 steps, a stop, and 2 more in a new process state.

    AffineNet's stage carries every kind of state a resume restores: weights, optimizer
    slots, the step, the data position and the dropout random state (TransNet's stage has
    no dropout and costs twice as much to trace).
    """
    name = "affinenet"
    straight = fresh_model()
    run(name, straight, tmp_path / "straight", training_pairs, total_steps=4)

    first_half = fresh_model()
    run(name, first_half, tmp_path / "resumed", training_pairs, total_steps=2)
    # A new model (as after a restart), whose own weights are overwritten by the checkpoint.
    keras.utils.set_random_seed(1)
    second_half = RFNet(affine_input_size=CROP)
    _, log = run(name, second_half, tmp_path / "resumed", training_pairs, total_steps=4)

    assert "resumed from" in log and "at step 2" in log
    reader = tf.train.load_checkpoint(str(tmp_path / "resumed"))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 4
    for a, b in zip(straight.weights, second_half.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert weights_digest(straight.weights) != weights_digest(fresh_model().weights)


def test_a_corrupt_newest_checkpoint_is_skipped_named_and_left_in_place(training_pairs, tmp_path, caplog):
    stage_dir = tmp_path / "affinenet"
    run("affinenet", fresh_model(), stage_dir, training_pairs, total_steps=4)  # ckpt-2, ckpt-4
    (stage_dir / "ckpt-4.index").write_bytes(b"overwritten")
    # A run to step 2 restores and only exports: no training step is traced.
    with caplog.at_level(logging.WARNING):
        _, log = run("affinenet", fresh_model(), stage_dir, training_pairs, total_steps=2)
    assert f"resumed from {stage_dir / 'ckpt-2'} at step 2" in log
    assert "skipped a checkpoint that does not restore" in caplog.text and "ckpt-4" in caplog.text
    assert (stage_dir / "ckpt-4.index").read_bytes() == b"overwritten"

    (stage_dir / "ckpt-2.index").write_bytes(b"overwritten too")
    with pytest.raises(CheckpointError, match=r"none of the checkpoints in .* restores \(ckpt-4: .*; ckpt-2: "):
        run("affinenet", fresh_model(), stage_dir, training_pairs, total_steps=2)
    assert sorted(path.name for path in stage_dir.glob("ckpt-*.index")) == ["ckpt-2.index", "ckpt-4.index"]


def test_a_state_file_naming_only_the_newest_checkpoint_resumes_from_it(training_pairs, tmp_path):
    """A run forked by hand: a checkpoint copied into a new directory with a one-line
    ``checkpoint`` file (no ``all_model_checkpoint_paths``) is resumed, not ignored."""
    run("affinenet", fresh_model(), tmp_path / "original", training_pairs, total_steps=2)
    fork = tmp_path / "fork"
    fork.mkdir()
    for path in (tmp_path / "original").glob("ckpt-2.*"):
        (fork / path.name).write_bytes(path.read_bytes())
    (fork / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n')
    _, log = run("affinenet", fresh_model(), fork, training_pairs, total_steps=2)
    assert f"resumed from {fork / 'ckpt-2'} at step 2" in log


def test_checkpoints_events_an_export_the_next_stage_loads_and_a_rerun_only_exports(
    training_pairs, tmp_path
):
    model = fresh_model()
    terms, log = run("transnet", model, tmp_path / "transnet", training_pairs, total_steps=3)
    assert set(terms) == {"total", "recon", "trans"}
    assert "step 3/3" in log and "img/s" in log
    assert tf.train.latest_checkpoint(tmp_path / "transnet").endswith("ckpt-3")
    assert list((tmp_path / "transnet" / "events").glob("events.out.tfevents.*"))
    config = json.loads((tmp_path / "transnet" / "export" / "rfnet.json").read_text())
    assert config["parts"] == ["transnet"] and config["provenance"]["steps"] == 3
    loaded = model_from_weights(tmp_path / "transnet", required=("transnet",))
    for a, b in zip(model.transnet.weights, loaded.transnet.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # A finished stage run again only exports.
    _, log = run("transnet", fresh_model(), tmp_path / "transnet", training_pairs, total_steps=3)
    assert "already at step 3" in log


def test_event_file_holds_every_term_the_learning_rate_and_images(training_pairs, tmp_path):
    run("affinenet", fresh_model(), tmp_path / "affinenet", training_pairs, total_steps=2)
    tags = set()
    for event_file in (tmp_path / "affinenet" / "events").glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    expected = {"total", "registration_error_px", "learning_rate", "vis", "nir", "vis_to_nir",
                "registered", "checkerboard"}
    assert {f"affinenet/{tag}" for tag in expected} <= tags


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(training_pairs, tmp_path):
    stage_dir = tmp_path / "transnet"

    def poisoned_from_step_3(start):
        dataset = transnet_dataset(training_pairs, Stream(crop_size=CROP, batch_size=BATCH, start_batch=start))
        poison = lambda index: tf.where(index >= 2, np.float32("nan"), np.float32(1.0))
        return dataset.enumerate(start).map(lambda index, batch: dict(batch, vis=batch["vis"] * poison(index)))

    config = LoopConfig(stage_dir=stage_dir, total_steps=5, steps_per_epoch=2, batch_size=BATCH,
                        checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss term\(s\) total, recon, trans"):
        run_stage(Stage("transnet", fresh_model()), STRATEGY, poisoned_from_step_3, config, io.StringIO())
    good = tf.train.latest_checkpoint(stage_dir)
    assert good.endswith("ckpt-2")
    reader = tf.train.load_checkpoint(good)
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 2
    for name, _ in tf.train.list_variables(good):
        if "transnet" in name:
            assert np.all(np.isfinite(reader.get_tensor(name))), name


def test_validation_runs_at_the_start_every_few_steps_and_at_the_end_and_is_logged(
    training_pairs, tmp_path
):
    seen = []

    def validation(model):
        seen.append(model)
        return {"rmse_mean": float(len(seen)), "rmse_median": 0.5}

    model = fresh_model()
    stage_dir = tmp_path / "affinenet"
    _, log = run("affinenet", model, stage_dir, training_pairs, total_steps=5,
                 validation=validation, validate_every=2)
    assert all(seen_model is model for seen_model in seen)
    records = [json.loads(line) for line in (stage_dir / "validation.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [0, 2, 4, 5]
    assert [record["rmse_mean"] for record in records] == [1.0, 2.0, 3.0, 4.0]
    assert "validation at step 4: rmse_mean 3 rmse_median 0.5" in log
    # A resumed run appends, without validating its starting step again.
    run("affinenet", RFNet(affine_input_size=CROP), stage_dir, training_pairs, total_steps=6,
        validation=validation, validate_every=2)
    steps = [json.loads(line)["step"] for line in (stage_dir / "validation.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4, 5, 6]


def test_the_stage_recalibrates_from_the_next_batches_before_each_validation_and_export(
    training_pairs, tmp_path, monkeypatch
):
    events = []

    def recalibrate(stage, batches):
        events.append(("recalibrate", next(iter(batches))["nir"].numpy()))

    def validation(model):
        events.append(("validate", None))
        return {"rmse_mean": 1.0}

    monkeypatch.setattr(type(Stage("affinenet", fresh_model())), "recalibrate", recalibrate)
    stage_dir = tmp_path / "affinenet"
    run("affinenet", fresh_model(), stage_dir, training_pairs, total_steps=3,
        validation=validation, validate_every=2)

    assert [name for name, _ in events] == [
        "validate", "recalibrate", "validate", "recalibrate", "validate"
    ]
    stream = Stream(crop_size=CROP, batch_size=BATCH, seed=0, start_batch=2)
    after_step_2 = next(iter(affinenet_dataset(training_pairs, stream)))["nir"].numpy()
    np.testing.assert_array_equal(events[1][1], after_step_2)
    # A rerun past the last step only exports, recalibrated first.
    events.clear()
    run("affinenet", fresh_model(), stage_dir, training_pairs, total_steps=3)
    assert [name for name, _ in events] == ["recalibrate"]
