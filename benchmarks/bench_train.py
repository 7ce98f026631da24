"""Training-step benchmark: time per step of each RFNet training stage, by crop size.

Run from the repository root (``--help`` lists every option)::

    python -m benchmarks.bench_train                 # batch 4; crops 256, 384, 512
    python -m benchmarks.bench_train --quick         # batch 1; crops 64, 96, 128: a smoke test
    python -m benchmarks.bench_train --stages=fusion,deformation --repeats=5
    python -m benchmarks.bench_train --affinenet_breakdown   # where AffineNet's step goes

What is timed: one optimisation step of a stage as ``rfnet_tf.training.loop`` runs it
on one replica: a ``tf.function`` with a ``GradientTape`` over ``Stage.compute``
(``training=True``), the gradient of ``terms["total"]`` with respect to the stage's
variable group and Adam's update of that group, the other parts frozen
(``Stage.freeze``). The batch is a fixed synthetic one of square crops: ``vis``
``U[0, 1)`` RGB, ``nir`` ``U[0, 1)``, a content mask of ones, a ground-truth affine
near the identity and a zero ground-truth flow (only monitored); the cost does not
depend on the pixel values. One ``RFNet()`` with the default settings serves every
stage (``affinenet`` trains AffineNet on the crop itself, as the pipeline feeds it).

Every round runs every stage at every crop size once, one after the other, so all
comparisons are measured side by side in the same run; after ``--warmup`` rounds (the
first traces) the table gives the median over ``--repeats`` rounds of the step time,
the cost per pixel (step time over ``batch * crop^2``) and, per stage, the time and the
per-pixel cost at each crop relative to the reference crop (the middle one, 384 by
default), as medians of the per-round ratios (which cancels slow drifts of the load).

``--affinenet_breakdown`` times instead the parts of the AffineNet stage at the coarse
input size (``--breakdown_size``, 192 as the shipped weights; batch ``--batch``): one
batch of its input pipeline, TransNet's forward pass, AffineNet's forward and backward
pass (deformable and plain convolutions), and the training step alone and the whole
loop per step (pipeline, step and the loop's Python work) as the loop runs them: as
before this work (TransNet in the step, the deformable convolutions in one batch group),
with the translation cached by the pipeline, with the deformable convolutions' batch
groups (``layers.deform_conv.PARALLEL_GROUPS``), with XLA on the whole step, under
``mixed_bfloat16`` (the training scripts' ``--mixed_precision`` on a CPU); then the same
loop before and after for the matching head (``--affine_head=matching``, the shipped
AffineNet's) instead of the specification's pooled head. Everything is float32 unless
named (``--policy`` does not apply), over synthetic 680 x 1024 pairs resized to the input
size, interleaved in rounds. Ratios are against the same head's loop before (medians of
per-round ratios); the last lines give each head's steps per hour before and with each
change.

On a GPU the script runs unchanged (TensorFlow places the steps on ``GPU:0``; the
header names the device); fetching the loss synchronises. Pass a larger ``--batch``
to load a big GPU. ``--policy=mixed_bfloat16`` times the stages' steps under the mixed
precision that the training scripts' ``--mixed_precision`` selects on a CPU
(``mixed_float16`` on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Run as a file, the repository root is not on the path; appended, so that a
# PYTHONPATH entry (another checkout, say) still comes first.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import layers.deform_conv as deform_conv  # noqa: E402
from layers import warp_affine  # noqa: E402
from losses import ncc  # noqa: E402
from rfnet_tf.colour import luma  # noqa: E402
from rfnet_tf.data import Pair, Stream, affinenet_dataset  # noqa: E402
from rfnet_tf.networks import RFNet  # noqa: E402
from rfnet_tf.networks.rfnet import resize_for_affine  # noqa: E402
from rfnet_tf.training.loop import LoopConfig, _make_train_step, make_optimizer  # noqa: E402
from rfnet_tf.training.scripts import translate_pairs  # noqa: E402
from rfnet_tf.training.stages import STAGES, Stage  # noqa: E402

# A small affine misalignment (normalised convention): the monitored ground truth.
AFFINE = np.array([[1.02, -0.03, 0.02], [0.03, 0.98, -0.01]], np.float32)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch 1, crops 64,96,128, 2 repeats, 1 warm-up round")
    parser.add_argument("--sizes", default=None,
                        help="square crop sizes, comma separated; the middle one is the "
                             "reference (default 256,384,512)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 4, quick 1)")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages, comma separated")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, quick 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds first, the first traces (default 2, quick 1)")
    parser.add_argument("--policy", default="float32",
                        help="Keras dtype policy, e.g. mixed_bfloat16 (CPU) or mixed_float16 (GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--affinenet_breakdown", action="store_true",
                        help="time the parts of the AffineNet stage instead (docstring)")
    parser.add_argument("--breakdown_size", type=int, default=192,
                        help="--affinenet_breakdown: the coarse input size")
    parser.add_argument("--loop_steps", type=int, default=5,
                        help="--affinenet_breakdown: steps per timed loop run")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in (args.sizes or ("64,96,128" if args.quick else "256,384,512")).split(",")]
    args.stages = args.stages.split(",")
    unknown = set(args.stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; stages are {STAGES}")
    if args.batch is None:
        args.batch = 1 if args.quick else 4
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1 (the warm-up traces)")
    return args


def make_batch(batch: int, size: int, rng: np.random.Generator) -> dict[str, tf.Tensor]:
    """A synthetic batch of ``size x size`` crops with every key a stage reads."""
    return {
        "vis": tf.constant(rng.uniform(0.0, 1.0, (batch, size, size, 3)).astype(np.float32)),
        "nir": tf.constant(rng.uniform(0.0, 1.0, (batch, size, size, 1)).astype(np.float32)),
        "mask": tf.ones((batch, size, size, 1), tf.float32),
        "affine": tf.constant(np.repeat(AFFINE[None], batch, 0)),
        "flow": tf.zeros((batch, size, size, 2), tf.float32),
    }


def make_step(stage: Stage, batch: dict):
    """``step()``: one optimisation step of ``stage`` on ``batch``; returns the loss.

    The step freezes the other parts when it is created and again before each call,
    since the stages share one model.
    """
    stage.freeze()
    variables = stage.variables
    optimizer = keras.optimizers.Adam(1e-5)
    optimizer.build(variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            terms, _ = stage.compute(batch, training=True)
        grads = tape.gradient(terms["total"], variables)
        optimizer.apply_gradients(zip(grads, variables))
        return terms["total"]

    def run() -> float:
        stage.freeze()
        start = time.perf_counter()
        step().numpy()
        return time.perf_counter() - start

    return run


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def synthetic_pairs(count: int, size: int, rng: np.random.Generator) -> list[Pair]:
    """``count`` smooth random 680 x 1024 pairs resized to ``size`` x ``size``, as the
    coarse stages resize their training pairs."""
    pairs = []
    for index in range(count):
        noise = rng.uniform(0.0, 1.0, (1, 85, 128, 4)).astype(np.float32)
        image = tf.image.resize(noise, (680, 1024), method="bicubic")
        image = tf.clip_by_value(resize_for_affine(image, size), 0.0, 1.0)[0].numpy()
        pairs.append(Pair(name=f"pair{index}", vis=image[..., :3], nir=image[..., 3:]))
    return pairs


@contextlib.contextmanager
def deform_groups(count: int):
    """Within, ``layers.deform_conv.PARALLEL_GROUPS`` is ``count``: a step traced
    inside keeps that many batch groups (the constant is read when tracing)."""
    saved = deform_conv.PARALLEL_GROUPS
    deform_conv.PARALLEL_GROUPS = count
    try:
        yield
    finally:
        deform_conv.PARALLEL_GROUPS = saved


def affinenet_breakdown(args) -> None:
    """The table of ``--affinenet_breakdown`` (module docstring)."""
    size, batch = args.breakdown_size, args.batch
    rng = np.random.default_rng(args.seed)
    pairs = synthetic_pairs(8, size, rng)
    strategy = tf.distribute.get_strategy()

    def setup(policy: str, affine_head: str = "pooled"):
        """``(model, stage, cached translations)`` built under the dtype policy."""
        keras.config.set_dtype_policy(policy)
        try:
            model = RFNet(affine_input_size=size, affine_head=affine_head)
            stage = Stage("affinenet", model)
            stage.freeze()
            return model, stage, translate_pairs(model, pairs)
        finally:
            keras.config.set_dtype_policy("float32")

    def stream(translations):
        stream = Stream(crop_size=size, batch_size=batch, seed=args.seed, crops_per_image=20)
        return iter(affinenet_dataset(pairs, stream, translated=translations))

    def loop_step(stage, translations, groups: int = deform_conv.PARALLEL_GROUPS,
                  jit_compile: bool = False):
        """``(one step on a fixed batch, loop_steps steps as run_stage runs them)``,
        both traced with ``groups`` batch groups in the deformable convolutions."""
        config = LoopConfig(stage_dir=Path("."), total_steps=1, steps_per_epoch=1, batch_size=batch)
        optimizer = make_optimizer(config)
        optimizer.build(stage.variables)
        train_step = _make_train_step(stage, strategy, optimizer, stage.variables, jit_compile)
        iterator = stream(translations)
        fixed = iter(tf.data.Dataset.from_tensors(next(stream(translations))).repeat())
        step_only = lambda: train_step(fixed)["total"].numpy()

        def loop():  # as run_stage: next batch, step, every term to a Python float
            for _ in range(args.loop_steps):
                {name: float(value) for name, value in train_step(iterator).items()}

        with deform_groups(groups):
            step_only()
            loop()
        return step_only, loop

    model, stage, translations = setup("float32")
    _, stage_bf16, translations_bf16 = setup("mixed_bfloat16")
    matching_model, stage_matching, translations_matching = setup("float32", "matching")
    _, stage_matching_bf16, translations_matching_bf16 = setup("mixed_bfloat16", "matching")
    inputs = next(stream(None))
    translated = tf.cast(model.transnet.translate_vis(luma(inputs["vis"])), tf.float32)
    pair_input = tf.concat([translated, inputs["nir"]], axis=-1)
    translate = tf.function(model.transnet.translate_vis)
    plain = RFNet(deformable=False, affine_input_size=size).affinenet

    def forward_backward(network):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                affine = network(pair_input, training=True)
                warped, mask = warp_affine(translated, affine)
                loss = -tf.reduce_mean(ncc(warped, inputs["nir"], mask))
            return tape.gradient(loss, network.trainable_weights)[0]

        return lambda: run().numpy()

    before_step, before_loop = loop_step(stage, None, groups=1)
    cached_one_step, cached_one_loop = loop_step(stage, translations, groups=1)
    cached_step, cached_loop = loop_step(stage, translations)
    xla_step, _ = loop_step(stage, translations, jit_compile=True)
    bf16_step, bf16_loop = loop_step(stage_bf16, translations_bf16)
    matching_step, matching_loop = loop_step(stage_matching, translations_matching)
    _, matching_before_loop = loop_step(stage_matching, None, groups=1)
    _, matching_bf16_loop = loop_step(stage_matching_bf16, translations_matching_bf16)
    pipeline_today, pipeline_cached = stream(None), stream(translations)
    groups = f"{deform_conv.PARALLEL_GROUPS} batch groups"
    parts = {
        "input pipeline, one batch (translation in the step)": lambda: next(pipeline_today),
        "input pipeline, one batch (translation cached)": lambda: next(pipeline_cached),
        "TransNet forward (translate_vis)": lambda: translate(luma(inputs["vis"])).numpy(),
        f"AffineNet forward + backward + Eq. 4, deformable ({groups})": forward_backward(model.affinenet),
        "AffineNet forward + backward + Eq. 4, plain 3x3": forward_backward(plain),
        f"AffineNet forward + backward + Eq. 4, matching head ({groups})":
            forward_backward(matching_model.affinenet),
        "training step, TransNet in the step, 1 batch group (before)": before_step,
        "training step, translation cached, 1 batch group": cached_one_step,
        f"training step, translation cached, {groups}": cached_step,
        f"training step, translation cached, {groups}, XLA": xla_step,
        f"training step, translation cached, {groups}, mixed_bfloat16": bf16_step,
        f"training step, translation cached, {groups}, matching head": matching_step,
        "loop per step, TransNet in the step, 1 batch group (before)": before_loop,
        "loop per step, translation cached, 1 batch group": cached_one_loop,
        f"loop per step, translation cached, {groups}": cached_loop,
        f"loop per step, translation cached, {groups}, mixed_bfloat16": bf16_loop,
        "loop per step, TransNet in the step, 1 batch group (before), matching head":
            matching_before_loop,
        f"loop per step, translation cached, {groups}, matching head": matching_loop,
        f"loop per step, translation cached, {groups}, mixed_bfloat16, matching head":
            matching_bf16_loop,
    }
    per_call = {name: (args.loop_steps if name.startswith("loop") else 1) for name in parts}
    seconds = {name: [] for name in parts}
    started = time.perf_counter()
    for round_index in range(args.warmup + args.repeats):
        print(f"round {round_index + 1}/{args.warmup + args.repeats} ...", file=sys.stderr, flush=True)
        for name, function in parts.items():
            elapsed = timed(function) / per_call[name]
            if round_index >= args.warmup:
                seconds[name].append(elapsed)
    head_of = lambda name: "matching" if name.endswith("matching head") else "pooled"
    heads = {head: [name for name in parts if name.startswith("loop") and head_of(name) == head]
             for head in ("pooled", "matching")}
    before_of = {name: seconds[heads[head_of(name)][0]] for name in parts}
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, {os.cpu_count()} CPU cores; "
          f"AffineNet stage at {size}x{size}, batch {batch}, float32 unless named; warm-up "
          f"{args.warmup}, median of {args.repeats} rounds ({args.loop_steps} steps per loop "
          f"run); wall time {time.perf_counter() - started:.0f} s")
    header = f"{'part':80s} {'ms':>8s} {'x loop before':>14s}"  # of the same head
    print(header)
    print("-" * len(header))
    for name, times in seconds.items():
        ratio = statistics.median(a / b for a, b in zip(times, before_of[name]))
        print(f"{name:80s} {statistics.median(times) * 1e3:8.0f} {ratio:14.2f}")
    for head, loops in heads.items():
        before = seconds[loops[0]]
        print(f"steps per hour of the loop, {head} head: {3600 / statistics.median(before):.0f} before")
        for name in loops[1:]:
            gain = statistics.median(b / a for a, b in zip(seconds[name], before))
            print(f"  {3600 / statistics.median(seconds[name]):.0f} with the "
                  f"{name[len('loop per step, '):]} ({gain:.2f}x)")


def main(argv=None) -> None:
    args = parse_args(argv)
    keras.config.set_dtype_policy(args.policy)
    keras.utils.set_random_seed(args.seed)
    if args.affinenet_breakdown:
        affinenet_breakdown(args)
        return
    rng = np.random.default_rng(args.seed)
    model = RFNet()
    batches = {size: make_batch(args.batch, size, rng) for size in args.sizes}
    steps = {
        (name, size): make_step(Stage(name, model), batches[size])
        for name in args.stages
        for size in args.sizes
    }
    started = time.perf_counter()
    seconds = {key: [] for key in steps}
    for round_index in range(args.warmup + args.repeats):
        timed = round_index >= args.warmup
        print(f"round {round_index + 1}/{args.warmup + args.repeats}"
              f"{'' if timed else ' (warm-up)'} ...", file=sys.stderr, flush=True)
        for key, run in steps.items():
            elapsed = run()
            if timed:
                seconds[key].append(elapsed)

    reference = args.sizes[len(args.sizes) // 2]
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU"
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, device {device}, "
          f"{os.cpu_count()} CPU cores; policy {args.policy}; batch {args.batch}; "
          f"warm-up {args.warmup}, median of {args.repeats} rounds; wall time "
          f"{time.perf_counter() - started:.0f} s")
    header = (f"{'stage':12s} {'crop':>5s} {'ms / step':>10s} {'ns / pixel':>11s} "
              f"{f'time x {reference}':>12s} {f'per pixel x {reference}':>18s}")
    print(header)
    print("-" * len(header))
    for name in args.stages:
        base = seconds[name, reference]
        for size in args.sizes:
            times = seconds[name, size]
            pixels = args.batch * size * size
            time_ratio = statistics.median(a / b for a, b in zip(times, base))
            pixel_ratio = time_ratio * (reference * reference) / (size * size)
            median = statistics.median(times)
            print(f"{name:12s} {size:5d} {median * 1e3:10.0f} {median * 1e9 / pixels:11.0f} "
                  f"{time_ratio:12.2f} {pixel_ratio:18.2f}", flush=True)
        print()


if __name__ == "__main__":
    main()
