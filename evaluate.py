"""Evaluates RFNet against its baselines: registration (paper Table 1) and fusion (Table 2).

    python evaluate.py                                  # the SIMULATED demo set
    python evaluate.py --data_dir=../shared/data/vis_nir --misalign=both
    python evaluate.py --data_dir=BENCHMARK             # pairs with known affines (.npy)
    python evaluate.py --data_dir=MY_PAIRS --misalign=none   # register and fuse, unscored
    python evaluate.py --landmarks_dir=DIR              # .mat files with landmarks
    python evaluate.py --vis=a_rgb.png --nir=a_nir.png  # one real pair
    python evaluate.py --weights=exported/rfnet         # a SavedModel (rfnet_tf.export)

Inputs (exactly one): ``--vis``/``--nir`` (one real pair, misalignment unknown: PSNR and
SSIM only); ``--data_dir`` (aligned pairs, misaligned here by a seeded synthetic
transform with exact ground truth: landmark errors and end-point error too; pairs whose
NIR was warped by a stored affine, the known_affine layout, scored against it as they
are; or, with ``--misalign=none``, real pairs registered and fused as they are, PSNR
and SSIM only); ``--landmarks_dir`` (real misalignment, landmarks from .mat files);
none: the built-in demo set, scikit-image photographs with a *simulated* NIR (labelled
so everywhere).

Writes to ``--out_dir`` (all or nothing: a staged directory replaces it at the end):
``results.json`` (mean ± std per method and metric, every pair's values, the
configuration), ``results.md`` (the two tables, best per row in bold, notes),
``registration_success.png`` (with landmarks: the share of pairs within each error) and
``images/<pair>/`` (registered VIS, fused RGB, checkerboards before and after, RFNet's
flow, a side-by-side panel); the tables are also printed, a progress bar goes to
stderr. Bad input (a missing, corrupt, mismatched or too small file, a .mat without the
landmark keys or with no landmarks, an empty folder), conflicting or unparsable flags,
bad weights and an output location that cannot be written exit with code 2 and a
one-line message naming the problem, before any inference; SIGINT / SIGTERM stop the run
with one line and code 130 / 143, leaving nothing behind (``rfnet_tf.cli``; the README's
table "What happens on bad input").
"""

from __future__ import annotations

import sys

from rfnet_tf.startup import native_stderr_silenced

with native_stderr_silenced():
    import tensorflow as tf

    tf.config.list_logical_devices()  # Device set-up logs its own lines; do it now.

from absl import flags, logging

from rfnet_tf import misalignment_flags
from rfnet_tf import cli
from rfnet_tf.evaluation import INPUT_ERRORS, default_weights_dir, execute, settings_from_flags
from rfnet_tf.evaluation.command import Settings as EvaluationSettings
from rfnet_tf.evaluation.inference import FINE_GUARDS
from rfnet_tf.evaluation.methods import DEFAULT_METHODS, methods_help
from rfnet_tf.evaluation.sources import FOLDER_LAYOUTS, FOLDER_MISALIGNMENTS

flags.DEFINE_string("vis", None, "One real pair: the VIS (RGB or grey) image file. Needs --nir.")
flags.DEFINE_string("nir", None, "One real pair: the NIR image file, same size as --vis.")
flags.DEFINE_string(
    "data_dir", None,
    "A folder of aligned pairs (vis/ + nir/ folders, or the RGB-NIR Scene layout), "
    "evaluated under a seeded synthetic misalignment (--misalign, --seed); or of pairs with "
    "known affines (RGB-NIR Scene layout plus NNNN_nir.npy), evaluated as they are.",
)
flags.DEFINE_enum(
    "layout", EvaluationSettings.layout, list(FOLDER_LAYOUTS),
    "Layout of --data_dir (auto: detected; known_affine: NNNN_rgb / NNNN_nir images and an "
    "NNNN_nir.npy affine in category folders).",
)
flags.DEFINE_string("vis_dir", EvaluationSettings.vis_dir, "--data_dir 'pairs' layout: the VIS folder's name.")
flags.DEFINE_string(
    "nir_dir", EvaluationSettings.nir_dir, "--data_dir 'pairs' layout: the NIR folder's name (RoadScene: ir)."
)
flags.DEFINE_bool("skip_bad", EvaluationSettings.skip_bad, "Skip (and log) unreadable pairs instead of stopping.")
flags.DEFINE_string(
    "exclude", "",
    "--data_dir only: comma-separated pair names to leave out (e.g. pairs that are not "
    "aligned, whose own misalignment would corrupt the synthetic ground truth); split "
    "names stand for their pairs (e.g. vis_nir_not_aligned).",
)
flags.DEFINE_string(
    "pairs", "",
    "--data_dir only: comma-separated pair names to evaluate (default: all). Split names "
    "stand for their pairs: --pairs=country_validation is the validation split that no "
    "training run of the shipped weights saw (rfnet_tf.data.splits).",
)
flags.DEFINE_string(
    "landmarks_dir", None,
    "A folder of .mat files (I_move, I_fix, LMmove, LMfix): real misalignment, landmark "
    "errors from the files.",
)
flags.DEFINE_enum(
    "misalign", EvaluationSettings.misalign, list(FOLDER_MISALIGNMENTS),
    "Synthetic misalignment for --data_dir and the demo set: a global affine, a smooth "
    "local field, or both (affine, then local; RFNet's coarse-to-fine case); none (--data_dir "
    "only): the pairs as they are, registered and fused without scores.",
)
flags.DEFINE_integer(
    "seed", EvaluationSettings.seed, "Seed of the synthetic misalignment (and of the demo's simulated NIR noise)."
)
flags.DEFINE_integer("num_landmarks", EvaluationSettings.num_landmarks, "Landmarks per synthetic pair (the paper uses 5).")
flags.DEFINE_string(
    "demo_images", ",".join(EvaluationSettings.demo_images),
    "Demo set only: which scikit-image photographs (comma-separated; default all four; "
    "name fewer for a quick run).",
)
flags.DEFINE_string(
    "weights", None,
    "RFNet weights: a weights directory (rfnet.json + parts), a training stage directory "
    "holding export/, or a SavedModel (python -m rfnet_tf.export). Default: weights/ next "
    "to this script.",
)
flags.DEFINE_string(
    "methods", ",".join(DEFAULT_METHODS), methods_help(),
)
flags.DEFINE_string("out_dir", "results", "Output directory (replaced as a whole at the end).")
flags.DEFINE_bool(
    "paper_conventions", EvaluationSettings.paper_conventions,
    "Fusion STD, AG and PSNR as in the paper's Table 2 instead of the standard definitions.",
)
flags.DEFINE_integer("checkerboard_tiles", EvaluationSettings.checkerboard_tiles, "Tiles per side of the checkerboard images.")
flags.DEFINE_integer("ecc_levels", EvaluationSettings.ecc_levels, "Pyramid levels of the ECC baseline.")
flags.DEFINE_integer(
    "coarse_refinement_steps", None,
    "Test-time refinement of RFNet's affine: Adam steps per pyramid level on the coarse "
    "loss, Eq. 4 (an extension; 0 = AffineNet's single pass, as in the paper). Default: "
    "the value stored with the weights (rfnet.json).",
)
flags.DEFINE_enum(
    "fine_guard", EvaluationSettings.fine_guard, list(FINE_GUARDS),
    "The guard on F2M's flow (an extension): 'on' applies the flow only where it raises the "
    "gradient NCC of the registered VIS with the NIR by the shipped margin; 'off' always "
    "applies it, as the paper; 'stored': as rfnet.json says (the shipped weights: on).",
)
misalignment_flags.define_affine_flags()
misalignment_flags.define_local_flags()
FLAGS = flags.FLAGS
FLAG_NAMES = misalignment_flags.AFFINE_FLAGS + misalignment_flags.LOCAL_FLAGS + (
    "vis", "nir", "data_dir", "layout", "vis_dir", "nir_dir", "skip_bad", "exclude", "pairs",
    "landmarks_dir", "misalign", "seed", "num_landmarks", "demo_images", "weights", "methods", "out_dir",
    "paper_conventions", "checkerboard_tiles", "ecc_levels", "coarse_refinement_steps",
    "fine_guard",
)


def main(argv) -> None:
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    values = {name: FLAGS[name].value for name in FLAG_NAMES}
    present = {name for name in FLAG_NAMES if FLAGS[name].present}
    settings = settings_from_flags(values, present, default_weights_dir(__file__))
    report = execute(settings, extra_config={"command": sys.argv})
    print(report.terminal)
    plot = report.results["config"]["success_plot"]
    written = ", ".join(["results.json", "results.md", *([plot] if plot else []), "images/"])
    print(f"\nresults written to {report.out_dir}/ ({written})")


if __name__ == "__main__":
    cli.run(main, "evaluate.py", INPUT_ERRORS)
