"""The training loop shared by every stage: tf.function steps under a tf.distribute
strategy, Adam with exponential decay, resumable checkpoints, TensorBoard and progress."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from rfnet_tf.cli import check_stop
from rfnet_tf.training.runtime import is_chief, worker_name
from rfnet_tf.training.stages import TrainingStage
from rfnet_tf.training.validation import VALIDATION_LOG
from rfnet_tf.visualize import checkerboard
from rfnet_tf.weights import EXPORT_SUBDIR, export_weights

# Images per TensorBoard image summary.
_SUMMARY_IMAGES = 3


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the run stops without saving."""


class CheckpointError(RuntimeError):
    """A stage directory holds checkpoints, but none of them restores."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long and how a stage trains.

    Attributes:
      stage_dir: checkpoints, events and ``export/`` of the stage.
      total_steps: the step counter at which training ends.
      steps_per_epoch: for the learning-rate decay and the epoch shown.
      batch_size: global batch size (for images per second).
      learning_rate: initial Adam learning rate.
      decay_rate: learning-rate factor per epoch (continuous exponential decay).
      clip_norm: the gradients' global norm is clipped to it (0: no clipping).
      log_every: steps between progress lines and scalar summaries.
      checkpoint_every: steps between checkpoints (and image summaries).
      jit_compile: compile the forward and backward pass with XLA.
      carried_parts: frozen parts loaded from earlier stages, exported along.
      provenance: recorded in the export's ``rfnet.json``.
      max_to_keep: checkpoints kept.
      validation: measures the stage's model on held-out data
        (``rfnet_tf.training.validation.Validation``), or ``None``.
      validate_every: steps between validations (also at the first and last step).
    """

    stage_dir: Path
    total_steps: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float = 4e-4
    decay_rate: float = 0.96
    clip_norm: float = 0.0
    log_every: int = 10
    checkpoint_every: int = 200
    jit_compile: bool = False
    carried_parts: tuple[str, ...] = ()
    provenance: dict = dataclasses.field(default_factory=dict)
    max_to_keep: int = 3
    validation: Callable | None = None
    validate_every: int = 200


def weights_digest(variables) -> str:
    """sha256 of the variables' values: equal on every worker of a synchronous run."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def _format_terms(values: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.4g}" for name, value in values.items())


def make_optimizer(config: LoopConfig) -> keras.optimizers.Optimizer:
    """Adam with the learning rate multiplied by ``decay_rate`` every epoch, smoothly."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate,
        decay_steps=max(config.steps_per_epoch, 1),
        decay_rate=config.decay_rate,
    )
    optimizer = keras.optimizers.Adam(schedule, global_clipnorm=config.clip_norm or None)
    if keras.config.dtype_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def run_stage(
    stage: TrainingStage,
    strategy: tf.distribute.Strategy,
    make_dataset: Callable[[int], tf.data.Dataset],
    config: LoopConfig,
    out: TextIO = sys.stdout,
) -> dict[str, float]:
    """Trains ``stage`` until ``config.total_steps``, resuming from the stage directory.

    The stage's model must have been created under ``strategy.scope()``. A checkpoint
    in ``stage_dir`` is restored (model, optimizer, step) and the data stream resumes at
    the same position: ``make_dataset(start_step)`` must return the global-batch stream
    from batch ``start_step`` on; a checkpoint that does not restore is skipped for the
    one before it (:func:`restore_newest`). A non-finite loss term raises
    ``NonFiniteLossError`` before anything of that step is saved.

    Returns:
      The loss terms of the last step (empty if nothing was left to train).
    """
    chief = is_chief(strategy)
    stage_dir = Path(config.stage_dir)
    # Every worker saves (saving may need collectives); only the chief keeps its copy.
    save_dir = stage_dir if chief else stage_dir / f".{worker_name(strategy)}"
    stage.freeze()
    variables = stage.variables

    with strategy.scope():
        optimizer = make_optimizer(config)
        optimizer.build(variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(
        step=step, optimizer=optimizer, model=stage.model, random_states=stage.model.random_states
    )
    manager = tf.train.CheckpointManager(checkpoint, save_dir, max_to_keep=config.max_to_keep)
    restored = restore_newest(checkpoint, stage_dir, stage.name)
    if restored:
        print(f"[{stage.name}] resumed from {restored} at step {int(step.numpy())}", file=out, flush=True)
    start_step = int(step.numpy())
    if start_step >= config.total_steps:
        print(f"[{stage.name}] already at step {start_step} >= {config.total_steps}", file=out, flush=True)
        stage.recalibrate(make_dataset(start_step))
        _export(stage, config, chief, start_step)
        return {}

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = make_dataset(start_step).with_options(options)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    preview = next(iter(make_dataset(0).take(1)))
    train_step = _make_train_step(stage, strategy, optimizer, variables, config.jit_compile)

    writer = (
        tf.summary.create_file_writer(str(stage_dir / "events"))
        if chief
        else tf.summary.create_noop_writer()
    )
    terms: dict[str, float] = {}
    last_time, last_step = time.perf_counter(), start_step
    with writer.as_default():
        if start_step == 0:
            _validate(stage, config, chief, 0, out)
        for current in range(start_step + 1, config.total_steps + 1):
            check_stop()
            reduced = train_step(iterator)
            terms = {name: float(value) for name, value in reduced.items()}
            broken = [name for name, value in terms.items() if not math.isfinite(value)]
            if broken:
                raise NonFiniteLossError(
                    f"[{stage.name}] step {current}: loss term(s) {', '.join(broken)} became "
                    f"non-finite ({_format_terms(terms)}); stopped without saving, the last "
                    f"good checkpoint is {manager.latest_checkpoint or 'none'}"
                )
            step.assign(current)
            if current % config.log_every == 0 or current == config.total_steps:
                now = time.perf_counter()
                rate = (current - last_step) * config.batch_size / max(now - last_time, 1e-9)
                last_time, last_step = now, current
                learning_rate = float(optimizer.learning_rate)
                epoch = (current - 1) // max(config.steps_per_epoch, 1) + 1
                epochs = math.ceil(config.total_steps / max(config.steps_per_epoch, 1))
                _report(
                    f"[{stage.name}] step {current}/{config.total_steps} epoch {epoch}/{epochs} | "
                    f"{_format_terms(terms)} | lr {learning_rate:.3g} | {rate:.2f} img/s",
                    dict(terms, learning_rate=learning_rate), stage.name, current, out,
                )
            if current % config.checkpoint_every == 0 or current == config.total_steps:
                manager.save(checkpoint_number=current)
                _image_summaries(stage, preview, current)
            if current % config.validate_every == 0 or current == config.total_steps:
                # Also at the last step, before the export. A fresh stream of the
                # batches after this step's leaves the training iterator untouched.
                stage.recalibrate(make_dataset(current))
                _validate(stage, config, chief, current, out)
        writer.flush()
    _export(stage, config, chief, config.total_steps)
    if not chief:
        print(f"[{stage.name}] {worker_name(strategy)} weights sha256 {weights_digest(variables)}",
              file=out, flush=True)
        shutil.rmtree(save_dir, ignore_errors=True)
    elif worker_name(strategy) != "local":
        print(f"[{stage.name}] chief weights sha256 {weights_digest(variables)}", file=out, flush=True)
    return terms


def restore_newest(checkpoint: tf.train.Checkpoint, stage_dir: Path, name: str) -> str | None:
    """Restores the newest checkpoint of ``stage_dir`` that restores; returns its path
    (``None``: the directory holds no checkpoint).

    Checkpoints newer than that one, which do not restore (a corrupt or truncated file,
    another model's), are named in a logged warning each; they stay where they are.

    Raises:
      CheckpointError: the directory lists checkpoints, but none of them restores.
    """
    state = tf.train.get_checkpoint_state(stage_dir)
    paths = list(state.all_model_checkpoint_paths) if state else []
    # A state file written by hand (a run forked from another's checkpoint) may name
    # only the newest checkpoint, without the list.
    if state and state.model_checkpoint_path and state.model_checkpoint_path not in paths:
        paths.append(state.model_checkpoint_path)
    failures = []
    for path in reversed(paths):
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as error:  # TensorFlow raises many types for an unusable checkpoint.
            reason = " ".join(str(error).split())[:200]
            failures.append(f"{Path(path).name}: {type(error).__name__}: {reason}")
            continue
        for failure in failures:
            logging.warning("[%s] skipped a checkpoint that does not restore, left in %s: %s",
                            name, stage_dir, failure)
        return path
    if failures:
        raise CheckpointError(
            f"[{name}] none of the checkpoints in {stage_dir} restores ({'; '.join(failures)}); "
            "move them away to start the stage over"
        )
    return None


def _make_train_step(stage, strategy, optimizer, variables, jit_compile):
    replicas = strategy.num_replicas_in_sync
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def gradients(batch):
        with tf.GradientTape() as tape:
            terms, _ = stage.compute(batch, training=True)
            # Each replica's mean over its share of the batch; the optimizer sums the
            # replicas' gradients, which makes the mean over the global batch.
            loss = terms["total"] / replicas
            if loss_scaled:
                loss = optimizer.scale_loss(loss)
        return terms, tape.gradient(loss, variables)

    if jit_compile:
        gradients = tf.function(gradients, jit_compile=True)

    def replica_step(batch):
        terms, grads = gradients(batch)
        optimizer.apply_gradients(zip(grads, variables))
        return terms

    @tf.function
    def train_step(iterator):
        terms = strategy.run(replica_step, args=(next(iterator),))
        return {
            name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
            for name, value in terms.items()
        }

    return train_step


def _report(line: str, scalars: dict[str, float], tag: str, step: int, out: TextIO) -> None:
    """Prints a progress line and writes its scalars as ``<tag>/<name>`` summaries."""
    print(line, file=out, flush=True)
    for name, value in scalars.items():
        tf.summary.scalar(f"{tag}/{name}", value, step=step)


def _validate(stage: TrainingStage, config: LoopConfig, chief: bool, step: int, out: TextIO) -> None:
    """Measures the model on the held-out pairs; logs, summarises and appends the result
    to ``validation.jsonl`` (the chief only)."""
    if config.validation is None or not chief:
        return
    start = time.perf_counter()
    results = config.validation(stage.model)
    _report(
        f"[{stage.name}] validation at step {step}: {_format_terms(results)} "
        f"({time.perf_counter() - start:.1f} s)",
        results, "validation", step, out,
    )
    with open(Path(config.stage_dir) / VALIDATION_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps({"step": step, **results}) + "\n")


def _image_summaries(stage: TrainingStage, batch: dict, step: int) -> None:
    _, images = stage.compute(batch, training=False)
    images = {name: np.clip(value.numpy()[:_SUMMARY_IMAGES], 0.0, 1.0) for name, value in images.items()}
    if "registered" in images:
        boards = np.stack([checkerboard(a, b) for a, b in zip(images["registered"], images["nir"])])
        images["checkerboard"] = boards[..., None] if boards.ndim == 3 else boards
    for name, value in images.items():
        tf.summary.image(f"{stage.name}/{name}", value, step=step, max_outputs=_SUMMARY_IMAGES)


def _export(stage: TrainingStage, config: LoopConfig, chief: bool, steps: int) -> None:
    if not chief:
        return
    parts = tuple(dict.fromkeys(config.carried_parts + stage.trained_parts))
    provenance = dict(config.provenance, stage=stage.name, steps=steps)
    export_weights(stage.model, Path(config.stage_dir) / EXPORT_SUBDIR, parts, provenance)
