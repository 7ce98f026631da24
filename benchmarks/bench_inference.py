"""RFNet inference latency and peak memory against OpenCV's ECC baseline, by image size.

Run from anywhere (the repository root is put on the import path)::

    python benchmarks/bench_inference.py            # 384x384, 1024x680, 2048x1360
    python benchmarks/bench_inference.py --quick    # small images, under 2 minutes
    python benchmarks/bench_inference.py --sizes=640x480,1920x1080 --repeats=5
    python benchmarks/bench_inference.py --weights=runs/f2m/deformation

The default settings take about 10 minutes on 2 CPU cores. ``--quick`` (under 2
minutes) uses 96x96, 192x128 and 384x256 images, 2 repetitions and, for the untrained
model, the coarse module at 96x96 (``affine_input_size``) instead of 384x384: it checks
that the benchmark runs; its numbers are not the model's.

What is measured, per image size (``WxH``, batch 1):

* the input: a demo pair (``rfnet_tf.data.demo_pairs``, ``--pair``) resized with
  OpenCV to the size, its VIS misaligned by a known synthetic affine
  (``rfnet_tf.data.make_misaligned_pair``, seed ``--seed``; the same parameters at
  every size), so that ECC has real work to do;
* RFNet: one ``tf.function`` with open sizes (as ``rfnet_tf.evaluation.inference``),
  every output fetched to numpy; the model untrained, or ``--weights``
  (``rfnet_tf.weights.model_from_weights``). Weights do not change the cost;
* its parts (``--parts``): the coarse module (``RFNet.coarse``: TransNet and AffineNet
  on the ``affine_input_size`` copy, then the affine warp at full size) and F2M alone
  at full size; the full model also composes the two warps, so the parts do not add
  up exactly;
* ECC: ``rfnet_tf.baselines.ecc_affine`` called as ``evaluate.py`` calls it (3 pyramid
  levels, the VIS luma on 0-255, the moving image's content mask); its error (the
  largest distance, over the image corners, between its and the true sampling points)
  shows whether it converged. ECC's run time depends on how many iterations it needs,
  so on the content, not only on the pixel count.

Timings are medians over ``--repeats`` rounds after ``--warmup`` rounds (the first also
traces the functions). Every round times every size and method one after the other, so
all comparisons are measured side by side in the same run; the ratios (RFNet / ECC, and
each size against the first) are medians of the per-round ratios, which cancels slow
drifts of the machine's load.

Peak memory: the peak resident-set growth of one call, each configuration (size and
method) in a fresh subprocess: the peak resident set size (``VmHWM``, reset through
``/proc/self/clear_refs`` just before the call; ``ru_maxrss`` where there is no such
reset) after the call minus the resident set size before it, the model already built
and its function traced on a small image (and ECC already run on one), the inputs
already in memory. It counts the call's working memory and outputs (for RFNet also
the XLA compilation of the deformable convolution at the new size), not TensorFlow,
the model or the inputs; it is host memory (TensorFlow's allocator may keep freed
memory, hence the fresh process per configuration).
``tf.config.experimental.get_memory_info`` would be exact but is not available for the
CPU.

On a GPU: nothing to change; TensorFlow runs RFNet on the first visible GPU
(``CUDA_VISIBLE_DEVICES`` chooses it, ``CUDA_VISIBLE_DEVICES=`` forces the CPU), and
the header names the device. Fetching the outputs to numpy synchronises, so the
latency includes the device-to-host copy. The memory column then also reports the
GPU's peak allocation (``tf.config.experimental.get_memory_info("GPU:0")["peak"]``,
after ``reset_memory_stats``), the host RSS column being nearly empty. ECC stays on
the CPU, so RFNet / ECC then compares a GPU with a CPU. Without a GPU, TensorFlow and
OpenCV use every core; set ``taskset`` or ``OMP_NUM_THREADS`` to pin fewer.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# The packages live at the repository root, one level up; a script's own folder is what
# Python puts on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rfnet_tf.startup import native_stderr_silenced  # noqa: E402

with native_stderr_silenced():  # TensorFlow's C++ start-up lines; see rfnet_tf.startup
    import tensorflow as tf

    tf.config.list_physical_devices("GPU")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from rfnet_tf.baselines import ecc_affine  # noqa: E402
from rfnet_tf.colour import luma  # noqa: E402
from rfnet_tf.data import Pair, demo_pairs, make_misaligned_pair  # noqa: E402
from rfnet_tf.data.demo import DEMO_IMAGES  # noqa: E402
from rfnet_tf.evaluation.methods import PEAK, luma_255  # noqa: E402
from rfnet_tf.metrics.registration import affine_distance  # noqa: E402
from rfnet_tf.export import NIR_SPEC, VIS_SPEC  # noqa: E402
from rfnet_tf.networks import RFNet  # noqa: E402
from rfnet_tf.networks.rfnet import AFFINE_INPUT_SIZE  # noqa: E402
from rfnet_tf.weights import model_from_weights  # noqa: E402

DEFAULT_SIZES = ["384x384", "1024x680", "2048x1360"]
QUICK_SIZES = ["96x96", "192x128", "384x256"]
QUICK_REPEATS = 2
QUICK_AFFINE_INPUT_SIZE = 96
# evaluate.py's default (--ecc_levels).
ECC_LEVELS = 3
# The small image on which the functions are traced before a memory measurement.
TRACE_SIZE = (32, 32)
METHODS = ("rfnet", "coarse", "f2m", "ecc")

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", DEFAULT_SIZES, "Image sizes WIDTHxHEIGHT (the first is the reference).")
flags.DEFINE_integer("repeats", 3, "Timed rounds (medians are reported).")
flags.DEFINE_integer("warmup", 1, "Untimed rounds first (the first also traces).")
flags.DEFINE_bool(
    "quick", False, f"Small images {','.join(QUICK_SIZES)}, {QUICK_REPEATS} repeats, coarse "
    f"module at {QUICK_AFFINE_INPUT_SIZE}x{QUICK_AFFINE_INPUT_SIZE} (untrained model only); "
    "explicit --sizes / --repeats win."
)
flags.DEFINE_string("weights", None, "RFNet weights directory (default: an untrained model).")
flags.DEFINE_enum("pair", "coffee", list(DEMO_IMAGES), "Demo pair to resize to each size.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic affine misalignment.")
flags.DEFINE_bool("parts", True, "Also time the coarse module and F2M separately.")
flags.DEFINE_bool("memory", True, "Measure peak memory (one subprocess per size and method).")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark input: a misaligned pair at one size.

    Attributes:
      vis: ``(H, W, 3)`` float32 moving VIS in ``[0, 1]``.
      nir: ``(H, W, 1)`` float32 fixed NIR in ``[0, 1]``.
      moving_mask: ``(H, W)`` bool, where ``vis`` shows image content.
      registration: ``(2, 3)`` the true normalised registration affine.
    """

    vis: np.ndarray
    nir: np.ndarray
    moving_mask: np.ndarray
    registration: np.ndarray

    @property
    def height(self) -> int:
        return self.vis.shape[0]

    @property
    def width(self) -> int:
        return self.vis.shape[1]

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6


def parse_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` -> ``(height, width)``."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"a size is WIDTHxHEIGHT, e.g. 1024x680, got {text!r}") from None
    if width < 16 or height < 16:
        raise ValueError(f"sizes must be at least 16x16, got {text!r}")
    return height, width


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(h, w, C)`` float image resized to ``(height, width, C)`` (area when shrinking)."""
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    # OpenCV drops a single channel axis.
    return resized.reshape(height, width, image.shape[-1])


def make_case(pair: Pair, height: int, width: int, seed: int) -> Case:
    """``pair`` resized to ``height x width``, its VIS misaligned by a random affine."""
    aligned = Pair(name=pair.name, vis=resize(pair.vis, height, width),
                   nir=resize(pair.nir, height, width))
    misaligned = make_misaligned_pair(aligned, seed, kind="affine", num_landmarks=0)
    return Case(
        vis=misaligned.pair.vis.astype(np.float32),
        nir=misaligned.pair.nir.astype(np.float32),
        moving_mask=misaligned.mask[..., 0] > 0.5,
        registration=misaligned.affine.registration,
    )


def run_ecc(case: Case):
    """``ecc_affine`` exactly as ``evaluate.py`` runs it (``evaluation.methods.register``)."""
    return ecc_affine(
        luma_255(case.vis),
        case.nir[..., 0].astype(np.float64) * PEAK,
        levels=ECC_LEVELS,
        moving_mask=case.moving_mask,
    )


def make_model(weights: str | None, affine_input_size: int) -> RFNet:
    if weights:
        return model_from_weights(weights)
    return RFNet(affine_input_size=affine_input_size)


def rfnet_functions(model: RFNet, parts: bool) -> dict[str, Callable]:
    """``{method: tf.function(vis, nir)}`` with open sizes, as evaluation traces RFNet."""

    @tf.function(input_signature=[VIS_SPEC, NIR_SPEC])
    def full(vis, nir):
        return model([vis, nir], training=False)

    functions = {"rfnet": full}
    if parts:

        @tf.function(input_signature=[VIS_SPEC, NIR_SPEC])
        def coarse(vis, nir):
            return model.coarse(vis, nir)

        @tf.function(input_signature=[VIS_SPEC, NIR_SPEC])
        def f2m(vis, nir):
            return model.f2m([luma(vis), nir], training=False)

        functions.update(coarse=coarse, f2m=f2m)
    return functions


def fetch(outputs: dict) -> dict[str, np.ndarray]:
    """Every output as numpy: waits for the computation (and a device-to-host copy)."""
    return {key: value.numpy() for key, value in outputs.items()}


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    On Linux ``VmHWM`` of ``/proc/self/status``, the mark that ``reset_peak_rss``
    lowers (``ru_maxrss`` does not follow that reset); elsewhere ``ru_maxrss`` (bytes
    on macOS, KiB on other systems).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> None:
    """Lowers the peak-RSS mark to the current RSS, where the kernel allows it (Linux).

    Elsewhere the mark stays at its high point so far (TensorFlow's start-up, the
    tracing), and the growth measured from it is a lower bound.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure_memory(method: str, case: Case, weights: str | None, affine_input_size: int) -> dict:
    """Peak memory growth of one call (runs in a fresh subprocess; module docstring).

    Returns:
      ``{"rss": bytes, "gpu": bytes or None}``.
    """
    small = make_case(Pair("trace", vis=case.vis, nir=case.nir), *TRACE_SIZE, seed=0)
    gpu = bool(tf.config.list_logical_devices("GPU")) and method != "ecc"
    if method == "ecc":
        run_ecc(small)

        def call():
            run_ecc(case)
    else:
        function = rfnet_functions(make_model(weights, affine_input_size), parts=False)["rfnet"]
        fetch(function(tf.constant(small.vis[None]), tf.constant(small.nir[None])))
        vis, nir = tf.constant(case.vis[None]), tf.constant(case.nir[None])

        def call():
            fetch(function(vis, nir))

    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    reset_peak_rss()
    before = peak_rss_bytes()
    call()
    return {
        "rss": peak_rss_bytes() - before,
        "gpu": tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpu else None,
    }


def memory_in_subprocess(method, case, weights, affine_input_size) -> dict:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
        return executor.submit(measure_memory, method, case, weights, affine_input_size).result()


def paired_median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of the per-round ratio (drifts of the load cancel per round)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def system_header(title: str, details: list[str]) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    device = ", ".join(
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus
    ) or f"CPU ({platform.processor() or platform.machine()})"
    cpus = f"CPU count {os.cpu_count()}"
    if hasattr(os, "sched_getaffinity"):  # Linux: the cores this process may use
        cpus += f" (usable {len(os.sched_getaffinity(0))})"
    lines = [
        f"### {title}",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- TensorFlow {tf.__version__}, OpenCV {cv2.__version__}, Python {platform.python_version()}",
        f"- device: {device}; {cpus}",
        *(f"- {line}" for line in details),
    ]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}" if seconds >= 0.1 else f"{seconds * 1e3:.1f}"


def _mib(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "-"
    mib = num_bytes / 2**20
    return f"{mib:.0f}" if mib >= 10 else f"{mib:.1f}"


def main(argv) -> None:
    del argv
    sizes_text = QUICK_SIZES if FLAGS.quick and not FLAGS["sizes"].present else FLAGS.sizes
    repeats = QUICK_REPEATS if FLAGS.quick and not FLAGS["repeats"].present else FLAGS.repeats
    if repeats < 1 or FLAGS.warmup < 1:
        raise app.UsageError("--repeats and --warmup must be at least 1 (the warm-up traces)")
    try:
        sizes = [parse_size(text) for text in sizes_text]
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    started = time.perf_counter()
    model = make_model(FLAGS.weights, QUICK_AFFINE_INPUT_SIZE if FLAGS.quick else AFFINE_INPUT_SIZE)
    affine_input_size = model.affine_input_size

    (pair,) = demo_pairs(names=(FLAGS.pair,))
    cases = [make_case(pair, height, width, FLAGS.seed) for height, width in sizes]
    methods = [m for m in METHODS if FLAGS.parts or m in ("rfnet", "ecc")]

    memory = {}
    if FLAGS.memory:
        for case in cases:
            for method in ("rfnet", "ecc"):
                print(f"peak memory: {method} {case.label} ...", flush=True)
                memory[method, case.label] = memory_in_subprocess(
                    method, case, FLAGS.weights, affine_input_size
                )

    functions = rfnet_functions(model, FLAGS.parts)
    inputs = {case.label: (tf.constant(case.vis[None]), tf.constant(case.nir[None])) for case in cases}
    ecc_results = {}

    def call(method: str, case: Case) -> None:
        if method == "ecc":
            ecc_results[case.label] = run_ecc(case)
        else:
            fetch(functions[method](*inputs[case.label]))

    seconds = {(method, case.label): [] for method in methods for case in cases}
    for round_index in range(FLAGS.warmup + repeats):
        timed = round_index >= FLAGS.warmup
        print(f"round {round_index + 1}/{FLAGS.warmup + repeats}"
              f"{'' if timed else ' (warm-up)'} ...", flush=True)
        for case in cases:
            for method in methods:
                start = time.perf_counter()
                call(method, case)
                if timed:
                    seconds[method, case.label].append(time.perf_counter() - start)

    median = {key: statistics.median(values) for key, values in seconds.items()}
    reference = cases[0].label
    latency_rows, scaling_rows = [], []
    for case in cases:
        label = case.label
        ecc = ecc_results[label]
        ecc_note = (
            "failed" if ecc.failed
            else f"{affine_distance(ecc.theta, case.registration, (case.height, case.width)):.2f}"
        )
        mem_rfnet, mem_ecc = memory.get(("rfnet", label), {}), memory.get(("ecc", label), {})
        rfnet_memory = _mib(mem_rfnet.get("rss"))
        if mem_rfnet.get("gpu") is not None:
            rfnet_memory += f" (GPU {_mib(mem_rfnet['gpu'])})"
        latency_rows.append([
            label,
            f"{case.megapixels:.2f}",
            _ms(median["rfnet", label]),
            _ms(median["coarse", label]) if FLAGS.parts else "-",
            _ms(median["f2m", label]) if FLAGS.parts else "-",
            _ms(median["ecc", label]),
            f"{paired_median_ratio(seconds['rfnet', label], seconds['ecc', label]):.1f}",
            rfnet_memory,
            _mib(mem_ecc.get("rss")),
            ecc_note,
        ])
        scaling_rows.append([
            label,
            f"{case.megapixels / cases[0].megapixels:.2f}",
            f"{median['rfnet', label] * 1e3 / case.megapixels:.0f}",
            f"{paired_median_ratio(seconds['rfnet', label], seconds['rfnet', reference]):.2f}",
            f"{median['f2m', label] * 1e3 / case.megapixels:.0f}" if FLAGS.parts else "-",
            f"{paired_median_ratio(seconds['f2m', label], seconds['f2m', reference]):.2f}"
            if FLAGS.parts else "-",
            f"{median['ecc', label] * 1e3 / case.megapixels:.0f}",
            f"{paired_median_ratio(seconds['ecc', label], seconds['ecc', reference]):.2f}",
        ])

    model_name = f"weights {FLAGS.weights}" if FLAGS.weights else "untrained"
    own_copy = model.affinenet_input_size
    affinenet_copy = (f", AffineNet on a {own_copy}x{own_copy} copy"
                      if own_copy not in (None, affine_input_size) else "")
    details = [
        f"RFNet ({model_name}, coarse module at {affine_input_size}x{affine_input_size}"
        f"{affinenet_copy}), "
        f"batch 1, float32, one tf.function with open sizes; ECC: {ECC_LEVELS} levels, on the CPU",
        f"input: demo pair '{FLAGS.pair}' (simulated NIR) resized to each size, VIS misaligned "
        f"by a synthetic affine (seed {FLAGS.seed})",
        f"medians of {repeats} rounds after {FLAGS.warmup} warm-up round(s); ratios are medians "
        "of per-round ratios",
    ]
    if FLAGS.quick:
        details.append("QUICK MODE: small shapes, checks that the script runs")
    print()
    print(system_header("RFNet inference vs ECC", details))
    print()
    print(markdown_table(
        ["image (WxH)", "Mpx", "RFNet ms", "coarse ms", "F2M ms", "ECC ms", "RFNet / ECC",
         "RFNet peak MiB", "ECC peak MiB", "ECC error px"],
        latency_rows,
    ))
    print()
    print(markdown_table(
        ["image (WxH)", f"pixels x {reference}", "RFNet ms/Mpx", f"RFNet time x {reference}",
         "F2M ms/Mpx", f"F2M time x {reference}", "ECC ms/Mpx", f"ECC time x {reference}"],
        scaling_rows,
    ))
    print()
    print("coarse = TransNet + AffineNet at the coarse input size (or AffineNet's own copy) + "
          "the search (if switched on) + the full-size affine warp; F2M alone at full size. "
          "Peak MiB: resident-set growth of one call in a fresh process (host memory). "
          "ECC error: largest corner distance to the true registration.")
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    app.run(main)
