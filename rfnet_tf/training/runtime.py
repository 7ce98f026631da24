"""Distribution strategies, mixed precision and run bookkeeping for the training scripts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def configure_cpu_devices(count: int) -> None:
    """Splits the CPU into ``count`` logical devices (for ``mirrored`` without GPUs).

    Must run before TensorFlow initialises its devices, i.e. before any tensor is made.
    """
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def make_strategy(name: str) -> tf.distribute.Strategy:
    """TensorFlow's own strategies: ``default`` (one device), ``mirrored`` (all local
    GPUs, or all logical CPU devices without GPUs) or ``multi_worker``
    (``MultiWorkerMirroredStrategy`` configured by the ``TF_CONFIG`` environment
    variable)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
        if gpus:
            return tf.distribute.MirroredStrategy(devices=gpus)
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        # NCCL all-reduce needs GPUs; on CPUs reduce through one device.
        return tf.distribute.MirroredStrategy(
            devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; strategies are {STRATEGIES}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_name(strategy: tf.distribute.Strategy) -> str:
    """``"<task_type>-<task_id>"`` in a cluster, ``"local"`` otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return "local"
    return f"{resolver.task_type}-{resolver.task_id}"


def configure_mixed_precision(enabled: bool) -> str:
    """Sets Keras' global dtype policy; returns its name.

    ``mixed_float16`` on GPUs, ``mixed_bfloat16`` on CPUs (float16 arithmetic is slow on
    CPUs and needs loss scaling; bfloat16 has float32's range). Losses, warps and the
    networks' output heads stay in float32.
    """
    if not enabled:
        policy = "float32"
    elif tf.config.list_physical_devices("GPU"):
        policy = "mixed_float16"
    else:
        policy = "mixed_bfloat16"
    keras.config.set_dtype_policy(policy)
    return policy


def flagfile_line(name: str, value) -> str | None:
    """``--name=value`` as absl parses it back: a list comma-separated; ``None`` (a flag
    left at its ``None`` default) has no line."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = ",".join(str(item) for item in value)
    return f"--{name}={value}"


def save_flags(directory: Path, values: dict) -> None:
    """Writes the effective flags beside the checkpoints: ``flags.json`` and a
    ``flags.txt`` usable as ``--flagfile`` to repeat the run."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "flags.json").write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    lines = [flagfile_line(name, value) for name, value in sorted(values.items())]
    (directory / "flags.txt").write_text("\n".join(line for line in lines if line) + "\n")


def stage_directory(root: str | os.PathLike, stage: str) -> Path:
    """``<root>/<stage>``: a stage's checkpoints, flags, events and ``export/``."""
    return Path(root) / stage
