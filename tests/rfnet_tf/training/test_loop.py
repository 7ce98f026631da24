"""The training loop: checkpoints and resume, exports, events, non-finite losses."""

from __future__ import annotations

import functools
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from rfnet_tf.data import affinenet_dataset, transnet_dataset
from rfnet_tf.networks import RFNet
from rfnet_tf.training.loop import LoopConfig, NonFiniteLossError, run_stage, weights_digest
from rfnet_tf.training.stages import Stage
from rfnet_tf.weights import model_from_weights

from .conftest import BATCH, CROP

DATASETS = {"transnet": transnet_dataset, "affinenet": affinenet_dataset}
STRATEGY = tf.distribute.get_strategy()


def fresh_model() -> RFNet:
    keras.utils.set_random_seed(0)
    return RFNet(affine_input_size=CROP)


def run(name, model, stage_dir, pairs, total_steps, checkpoint_every=2):
    make = functools.partial(DATASETS[name], pairs, crop_size=CROP, batch_size=BATCH, seed=0)
    config = LoopConfig(
        stage_dir=stage_dir,
        total_steps=total_steps,
        steps_per_epoch=2,
        batch_size=BATCH,
        log_every=1,
        checkpoint_every=checkpoint_every,
    )
    out = io.StringIO()
    terms = run_stage(Stage(name, model), STRATEGY, lambda start: make(start_batch=start), config, out)
    return terms, out.getvalue()


@pytest.mark.parametrize("name", ["transnet", "affinenet"])
def test_resumed_run_equals_an_uninterrupted_one(name, training_pairs, tmp_path):
    """4 steps in one run == 2 steps, a stop, and 2 more in a new process state."""
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


def test_writes_checkpoints_events_and_an_export_the_next_stage_loads(training_pairs, tmp_path):
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
    model = fresh_model()
    stage_dir = tmp_path / "transnet"
    run("transnet", model, stage_dir, training_pairs, total_steps=2, checkpoint_every=1)
    good = tf.train.latest_checkpoint(stage_dir)
    saved = {name: tf.train.load_checkpoint(good).get_tensor(name)
             for name, _ in tf.train.list_variables(good) if "transnet" in name and "OPTIMIZER" not in name}

    def poisoned(start):
        dataset = transnet_dataset(training_pairs, crop_size=CROP, batch_size=BATCH, start_batch=start)
        return dataset.map(lambda batch: dict(batch, vis=batch["vis"] * np.float32("nan")))

    config = LoopConfig(stage_dir=stage_dir, total_steps=5, steps_per_epoch=2, batch_size=BATCH,
                        checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss term\(s\) total, recon, trans"):
        run_stage(Stage("transnet", model), STRATEGY, poisoned, config, io.StringIO())
    assert tf.train.latest_checkpoint(stage_dir) == good
    reader = tf.train.load_checkpoint(good)
    for name, value in saved.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value)


def test_a_finished_stage_only_exports(training_pairs, tmp_path):
    run("transnet", fresh_model(), tmp_path / "transnet", training_pairs, total_steps=2)
    _, log = run("transnet", fresh_model(), tmp_path / "transnet", training_pairs, total_steps=2)
    assert "already at step 2" in log
