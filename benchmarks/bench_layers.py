"""Layer benchmark: DeformableConv2D and resample against keras.layers.Conv2D.

Run from the repository root (``--help`` lists every option)::

    python -m benchmarks.bench_layers                # B=4, 384x384, channels 16/32/64
    python -m benchmarks.bench_layers --quick        # small shapes, a smoke test
    python -m benchmarks.bench_layers --repeats=9 --nomemory --only=deform

What is timed: forward + backward inside one ``tf.function``: a ``GradientTape`` over
the call, ``loss = reduce_sum(y * r)`` with a fixed random ``r``, and the gradients with
respect to the input and every trainable variable (for ``resample``: the image and the
sample coordinates). The candidates of one shape run in the same process, interleaved,
``--warmup`` calls each (tracing and XLA compilation happen there) and then
``--repeats`` timed calls each; the table gives medians and the ratio to
``Conv2D(C, 3, padding="same")`` on the same ``(B, H, W, C)`` input.

``DeformableConv2D(C, 3)`` runs twice: with its offset branch as initialised (all
offsets 0, a regular sampling grid, the most cache-friendly case) and with the branch
kernel drawn so that the offsets are about ``N(0, offset_std^2)`` pixels (realistic;
the table prints the measured standard deviation). ``resample`` samples an image at the
coordinates of a mild affine warp (``affine_grid``), some of them outside the image.

Peak memory (column ``peak MB``): each case runs again in a fresh subprocess that builds
its inputs and variables, reads its resident memory, runs the warm-up calls, resets the
kernel's high-water mark (``/proc/self/clear_refs``) and runs two more calls; the column
is the high-water mark minus the resident memory before the first call. So it counts
what the steady-state call needs on top of its inputs (transient buffers, allocator
caches, compiled code) and not the one-off memory of tracing and compiling.
``tracemalloc`` cannot see TensorFlow's allocations, and ``ru_maxrss`` cannot be reset.

On a GPU the script runs unchanged: TensorFlow places the work on ``GPU:0`` when there
is one (check the ``device`` line of the header), the timing synchronises by fetching
the loss, and the memory column is then
``tf.config.experimental.get_memory_info("GPU:0")["peak"]`` after
``reset_memory_stats`` (measured in the same subprocess scheme). Pass a larger
``--batch`` to load a big GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Run as a file, the repository root is not on the path; appended, so that a
# PYTHONPATH entry (another checkout's layers, say) still comes first.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from layers import DeformableConv2D, affine_grid, resample  # noqa: E402

# A mild affine (normalised convention): rotation of about 5 degrees, scale 0.95, a shift.
AFFINE = np.array([[0.946, -0.083, 0.04], [0.083, 0.946, -0.03]], np.float32)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small shapes (B=1, 96x96; resample 96x96 and 256x170), 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 5, quick 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per case first")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 4, quick 1)")
    parser.add_argument("--channels", default="16,32,64", help="DeformableConv2D channels, comma separated")
    parser.add_argument("--offset_std", type=float, default=1.5,
                        help="target standard deviation of the random offsets, pixels")
    parser.add_argument("--only", choices=("all", "deform", "resample"), default="all")
    parser.add_argument("--nomemory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.batch is None:
        args.batch = 1 if args.quick else 4
    return args


def cases_for(args) -> list[list[dict]]:
    """Groups of cases; the first case of each group is its Conv2D yardstick."""
    batch = args.batch
    size = 96 if args.quick else 384
    groups = []
    if args.only in ("all", "deform"):
        for channels in (int(c) for c in args.channels.split(",")):
            shape = [batch, size, size, channels]
            groups.append([
                dict(kind="conv", shape=shape),
                dict(kind="deform_zero", shape=shape),
                dict(kind="deform_random", shape=shape),
            ])
    if args.only in ("all", "resample"):
        sizes = [(96, 96), (170, 256)] if args.quick else [(384, 384), (680, 1024)]
        for height, width in sizes:
            for channels in (1, 3):
                shape = [batch, height, width, channels]
                groups.append([dict(kind="conv", shape=shape), dict(kind="resample", shape=shape)])
    return groups


def build_step(case: dict, args):
    """``(step, info)``: ``step()`` runs forward + backward and returns the loss."""
    rng = np.random.default_rng(args.seed)
    batch, height, width, channels = case["shape"]
    image = tf.constant(rng.uniform(0.0, 1.0, (batch, height, width, channels)).astype(np.float32))
    weights_r = tf.constant(rng.normal(size=(batch, height, width, channels)).astype(np.float32))
    info = ""

    if case["kind"] == "resample":
        coords = affine_grid(tf.constant(np.repeat(AFFINE[None], batch, 0)), height, width)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([image, coords])
                sampled, _ = resample(image, coords)
                loss = tf.reduce_sum(sampled * weights_r)
            grads = tape.gradient(loss, [image, coords])
            return loss, grads

        return step, info

    if case["kind"] == "conv":
        layer = keras.layers.Conv2D(channels, 3, padding="same")
    else:
        layer = DeformableConv2D(channels, 3)
    layer.build(image.shape)
    if case["kind"] == "deform_random":
        # offset = conv(image) + bias with image ~ U[0, 1) (E[x^2] = 1/3): a kernel of
        # N(0, s^2) gives var(offset) = taps * C * s^2 / 3.
        scale = args.offset_std / np.sqrt(9 * channels / 3.0)
        layer.offset_kernel.assign(rng.normal(0.0, scale, layer.offset_kernel.shape).astype(np.float32))
        offsets = tf.nn.conv2d(tf.pad(image, [[0, 0], [1, 1], [1, 1], [0, 0]]), layer.offset_kernel, 1, "VALID")
        info = f"offset std {float(tf.math.reduce_std(offsets)):.2f} px"

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(image)
            out = layer(image)
            loss = tf.reduce_sum(out * weights_r)
        grads = tape.gradient(loss, [image] + layer.trainable_variables)
        return loss, grads

    return step, info


def run(step) -> float:
    """One synchronised call, seconds."""
    start = time.perf_counter()
    loss, _ = step()
    loss.numpy()
    return time.perf_counter() - start


def time_group(group: list[dict], args) -> list[tuple[float, str]]:
    steps = [build_step(case, args) for case in group]
    for step, _ in steps:
        for _ in range(args.warmup):
            run(step)
    times = [[] for _ in steps]
    for _ in range(args.repeats):
        for timings, (step, _) in zip(times, steps):
            timings.append(run(step))
    return [(float(np.median(t)), info) for t, (_, info) in zip(times, steps)]


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_peak_memory(case: dict, args) -> float:
    """Run in the subprocess: peak memory of the steady-state call, MB (see module doc)."""
    step, _ = build_step(case, args)
    gpu = bool(tf.config.list_logical_devices("GPU"))
    if gpu:
        base = tf.config.experimental.get_memory_info("GPU:0")["current"]
    else:
        base = _proc_status("VmRSS")
    for _ in range(args.warmup):
        run(step)
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    else:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    for _ in range(2):
        run(step)
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpu else _proc_status("VmHWM")
    return (peak - base) / 2**20


def peak_memory(case: dict, args, argv: list[str]) -> float:
    if __spec__ is not None:
        command = [sys.executable, "-m", __spec__.name]
    else:
        command = [sys.executable, str(Path(__file__).resolve())]
    result = subprocess.run(
        command + argv + ["--child", json.dumps(case)],
        capture_output=True, text=True, check=False,
    )
    for line in result.stdout.splitlines():
        if line.startswith("PEAK_MB "):
            return float(line.split()[1])
    sys.stderr.write(result.stderr[-2000:])
    return float("nan")


def describe(case: dict) -> str:
    names = {
        "conv": "Conv2D(C, 3)",
        "deform_zero": "DeformableConv2D zero offsets",
        "deform_random": "DeformableConv2D random offsets",
        "resample": "resample (affine coords)",
    }
    return names[case["kind"]]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child is not None:
        print(f"PEAK_MB {child_peak_memory(json.loads(args.child), args):.1f}")
        return
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU"
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, device {device}, "
          f"{os.cpu_count()} CPU cores; warm-up {args.warmup}, median of {args.repeats}; "
          f"forward + backward")
    header = f"{'case':34s} {'B, H, W, C':20s} {'median ms':>10s} {'x Conv2D':>9s} {'peak MB':>9s}  note"
    print(header)
    print("-" * len(header))
    for group in cases_for(args):
        results = time_group(group, args)
        conv_time = results[0][0]
        for case, (seconds, info) in zip(group, results):
            memory = float("nan") if args.nomemory else peak_memory(case, args, argv)
            shape = ", ".join(str(s) for s in case["shape"])
            print(f"{describe(case):34s} {shape:20s} {seconds * 1e3:10.1f} "
                  f"{seconds / conv_time:9.2f} {memory:9.1f}  {info}", flush=True)
        print()


if __name__ == "__main__":
    main()
