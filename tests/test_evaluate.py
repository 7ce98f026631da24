"""evaluate.py end to end, in subprocesses: every source and bad input.

(A run with a SavedModel as --weights is in tests/rfnet_tf/test_export.py, which
exports one anyway: a second export here would cost half a minute.)

Runs use untrained weights (RFNet with a 32x32 affine input, for speed) and small
images. The vis_nir run uses three of the ten pairs, downscaled by 8 into tmp_path
(never into the repository), to keep the run short; the reader tests load all ten.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from scipy import ndimage

from rfnet_tf.networks import RFNet
from rfnet_tf.weights import PARTS, export_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "evaluate.py"
REGISTRATION_METHODS = ["rfnet", "rfnet_coarse", "identity", "ecc", "sift"]
FUSION_METHODS = ["rfnet", "average", "laplacian"]
FUSION_METRICS = {"en", "std", "ag", "sf", "psnr", "mi", "ssim", "qabf"}
LANDMARK_METRICS = {"rmse", "mae", "mee", "success_2px", "success_5px", "success_10px"}
# What a classic method, or RFNet's coarse registration, reports besides its metrics.
OUTCOME_KEYS = {"failed", "reason", "correlation", "matches", "inliers"}
CONFIDENCE_KEYS = {"coarse_ncc", "coarse_overlap", "unsure"}
# The guard on F2M's flow, reported for the methods with a flow.
GUARD_KEYS = {"fine_gain", "fine_kept"}
ALIGNED_SCENES = ("scene_105", "scene_401", "scene_201")  # truly aligned pairs of vis_nir
SHAPE = (64, 80)


def evaluate(*flags: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *flags],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, stdout, stderr


def run_ok(*flags: str, cwd: Path) -> tuple[dict, str]:
    code, stdout, stderr = finish(evaluate(*flags, cwd=cwd))
    assert code == 0, stderr
    out_dir = Path(flags[[f.split("=")[0] for f in flags].index("--out_dir")].split("=", 1)[1])
    return json.loads((out_dir / "results.json").read_text()), stdout


def textured(rng: np.random.Generator, shape=SHAPE) -> np.ndarray:
    base = sum(ndimage.gaussian_filter(rng.normal(size=shape), s) * s for s in (1.5, 4.0, 10.0))
    return (base - base.min()) / (base.max() - base.min())


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)


def write_pair(root: Path, name: str, rng: np.random.Generator, shape=SHAPE) -> None:
    base = textured(rng, shape)
    write_png(root / "vis" / f"{name}.png", np.stack([base, base**1.2, base**0.8], axis=-1))
    write_png(root / "nir" / f"{name}.png", base**0.7)


def check_schema(results: dict, out_dir: Path, registration_metrics: set, num_pairs: int) -> None:
    """results.json has the documented keys and types, and every listed file exists."""
    assert set(results) == {"registration", "registration_by_category", "fusion", "per_image", "config"}
    assert list(results["registration"]) == REGISTRATION_METHODS
    assert list(results["fusion"]) == FUSION_METHODS
    for section, metrics in (("registration", registration_metrics), ("fusion", FUSION_METRICS)):
        for method, table in results[section].items():
            assert set(table) == metrics, (section, method)
            for stats in table.values():
                assert set(stats) == {"mean", "std", "n"}
                assert isinstance(stats["mean"], float) and isinstance(stats["std"], float)
                assert stats["std"] >= 0 and stats["n"] == num_pairs
    assert len(results["per_image"]) == num_pairs
    for record in results["per_image"]:
        assert isinstance(record["name"], str) and isinstance(record["height"], int)
        for method in REGISTRATION_METHODS:
            assert set(record["registration"][method]) - OUTCOME_KEYS - CONFIDENCE_KEYS - GUARD_KEYS == registration_metrics
        for method in ("rfnet", "rfnet_coarse"):
            confidence = record["registration"][method]
            assert CONFIDENCE_KEYS <= set(confidence) and isinstance(confidence["unsure"], bool)
            assert -1.0 <= confidence["coarse_ncc"] <= 1.0 and 0.0 <= confidence["coarse_overlap"] <= 1.0
        guard = record["registration"]["rfnet"]
        assert isinstance(guard["fine_kept"], bool) and -2.0 <= guard["fine_gain"] <= 2.0
        assert "fine_kept" not in record["registration"]["rfnet_coarse"]
        for method in ("ecc", "sift"):
            outcome = record["registration"][method]
            assert isinstance(outcome["failed"], bool) and isinstance(outcome["reason"], str)
        for method in FUSION_METHODS:
            assert set(record["fusion"][method]) == FUSION_METRICS
        assert all(isinstance(value, float) for value in record["seconds"].values())
        assert set(record["files"]) == {
            "registered_vis", "fused_rgb", "checkerboard_before", "checkerboard_after", "flow", "panel"
        }
        for name in record["files"].values():
            assert (out_dir / record["folder"] / name).is_file()
    config = results["config"]
    assert set(config) >= {"data", "weights", "methods", "metrics", "ecc", "sift", "images", "notes"}
    assert set(config["metrics"]["registration"]) == registration_metrics
    assert (out_dir / "results.md").read_text().startswith("# RFNet evaluation: ")
    leftovers = [p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}-")]
    assert leftovers == []
    umask = os.umask(0)
    os.umask(umask)
    for path in [out_dir, *out_dir.rglob("*")]:  # ordinary permissions, as the umask gives
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask, path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluate")


@pytest.fixture(scope="module")
def weights(workdir) -> Path:
    """Untrained RFNet weights (rfnet_tf.weights format)."""
    return export_weights(RFNet(affine_input_size=32), workdir / "weights", PARTS)


def test_landmark_files(workdir, weights):
    rng = np.random.default_rng(5)
    data = workdir / "mats"
    data.mkdir()
    landmarks = {}
    for name in ("b", "a"):
        base = textured(rng)
        moving = np.stack([base, base, base**1.3], axis=-1)
        lm_move = rng.uniform([5, 5], [SHAPE[1] - 5, SHAPE[0] - 5], size=(5, 2))  # 1-based [x, y]
        lm_fix = lm_move + rng.uniform(-6, 6, size=(5, 2))
        landmarks[name] = np.linalg.norm(lm_move - lm_fix, axis=1)
        scipy.io.savemat(
            data / f"{name}.mat",
            {
                "I_move": np.round(moving * 255).astype(np.uint8),
                "I_fix": np.round(base**0.7 * 255).astype(np.uint8),
                "LMmove": lm_move,
                "LMfix": lm_fix,
            },
        )
    out = workdir / "out_mats"
    results, stdout = run_ok(f"--landmarks_dir={data}", f"--weights={weights}", f"--out_dir={out}", cwd=workdir)
    check_schema(results, out, {*LANDMARK_METRICS, "psnr", "ssim"}, 2)
    assert [r["name"] for r in results["per_image"]] == ["a", "b"]
    for record in results["per_image"]:
        distances = landmarks[record["name"]]
        identity = record["registration"]["identity"]
        assert identity["rmse"] == pytest.approx(np.sqrt(np.mean(distances**2)), rel=1e-9)
        assert identity["mae"] == pytest.approx(distances.max(), rel=1e-9)
        assert identity["mee"] == pytest.approx(np.median(distances), rel=1e-9)
    config = results["config"]
    assert config["data"]["source"] == "landmarks" and config["data"]["misalignment"] == "real"
    assert "epe" in config["metrics"]["registration_not_applicable"]
    assert "Registration (paper Table 1)" in stdout and "Fusion (paper Table 2)" in stdout


def test_folder_of_generated_pairs(workdir, weights):
    rng = np.random.default_rng(6)
    data = workdir / "pairs"
    for name in ("p1", "p2"):
        write_pair(data, name, rng)
    out = workdir / "out_pairs"
    results, _ = run_ok(
        f"--data_dir={data}", "--misalign=affine", "--seed=2", f"--weights={weights}",
        f"--out_dir={out}", "--paper_conventions", cwd=workdir,
    )
    check_schema(results, out, {*LANDMARK_METRICS, "psnr", "ssim", "epe"}, 2)
    config = results["config"]
    assert config["weights"]["format"] == "weights"
    assert config["data"]["misalignment"] == "affine" and config["data"]["seed"] == 2
    assert config["metrics"]["conventions"] == "paper"
    assert "paper" in (out / "results.md").read_text()


def test_f2m_alone_from_an_f2m_only_export(workdir):
    """--methods=rfnet_fine runs on the export of an F2M training run without a coarse
    module (F2M's weights alone): its flow, registered and fused images are scored."""
    rng = np.random.default_rng(8)
    data = workdir / "pairs_local"
    for name in ("p1", "p2"):
        write_pair(data, name, rng)
    f2m_only = export_weights(RFNet(affine_input_size=32), workdir / "f2m_only", ("f2m",))
    out = workdir / "out_fine"
    results, stdout = run_ok(
        f"--data_dir={data}", "--misalign=local", f"--weights={f2m_only}",
        "--methods=rfnet_fine,identity,average", f"--out_dir={out}", cwd=workdir,
    )
    assert list(results["registration"]) == ["rfnet_fine", "identity"]
    assert list(results["fusion"]) == ["rfnet_fine", "average"]
    # An untrained F2M predicts zero flow: it registers as the identity does.
    fine, identity = results["registration"]["rfnet_fine"], results["registration"]["identity"]
    assert fine["epe"]["mean"] == pytest.approx(identity["epe"]["mean"], abs=1e-6)
    assert results["config"]["weights"]["parts"] == ["f2m"]
    assert results["config"]["images"]["flow"] == "rfnet_fine"
    assert all("flow" in record["files"] for record in results["per_image"])
    assert "RFNet fine (F2M alone)" in stdout


def test_vis_nir_subset(workdir, weights, vis_nir_dir):
    data = workdir / "vis_nir_small"
    for scene in ALIGNED_SCENES:
        for kind in ("vis", "nir"):
            with Image.open(vis_nir_dir / kind / f"{scene}.png") as image:
                small = image.resize((image.width // 8, image.height // 8), Image.Resampling.BOX)
                (data / kind).mkdir(parents=True, exist_ok=True)
                small.save(data / kind / f"{scene}.png")
    out = workdir / "out_vis_nir"
    results, _ = run_ok(f"--data_dir={data}", f"--weights={weights}", f"--out_dir={out}", cwd=workdir)
    check_schema(results, out, {*LANDMARK_METRICS, "psnr", "ssim", "epe"}, 3)
    assert results["config"]["data"]["misalignment"] == "both"
    assert not results["config"]["data"]["simulated"]


def test_pairs_with_known_affines(workdir, weights, known_affine_dir):
    """The issue's run: Table 1 with success rates and per-category rows, and the plot;
    identity's RMSE is the grid metric computed here by hand."""
    out = workdir / "out_known_affine"
    results, stdout = run_ok(
        f"--data_dir={known_affine_dir}", "--methods=rfnet_coarse,identity,ecc,sift",
        f"--weights={weights}", f"--out_dir={out}", cwd=workdir,
    )
    assert list(results["registration"]) == ["rfnet_coarse", "identity", "ecc", "sift"]
    assert results["config"]["data"]["source"] == "known_affine"
    table_1 = stdout[stdout.index("Registration (paper Table 1)"):stdout.index("note:")]
    for row in ("pairs < 2 px", "pairs < 5 px", "pairs < 10 px", "EPE (px)"):
        assert row in table_1
    assert "Registration by category" in table_1
    assert "field (n=2): RMSE (px)" in table_1 and "forest (n=1): pairs < 10 px" in table_1
    assert set(results["registration_by_category"]) == {"field", "forest"}
    assert (out / "registration_success.png").is_file()
    assert "](registration_success.png)" in (out / "results.md").read_text()
    assert "registration_success.png" in stdout.splitlines()[-1]
    for record in results["per_image"]:
        matrix = np.load(known_affine_dir / f"{record['name']}_nir.npy")
        height, width = record["height"], record["width"]
        ys, xs = np.meshgrid(np.linspace(0, height - 1, 9), np.linspace(0, width - 1, 9), indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()])
        inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
        source = inverse[:2, :2] @ grid + inverse[:2, 2:]
        kept = (source[0] >= 0) & (source[0] <= width - 1) & (source[1] >= 0) & (source[1] <= height - 1)
        rmse = np.sqrt(np.mean(np.sum((grid - source)[:, kept] ** 2, axis=0)))
        assert record["registration"]["identity"]["rmse"] == pytest.approx(rmse, abs=0.01)


def test_a_folder_as_it_is_is_registered_and_fused_without_scores(workdir):
    rng = np.random.default_rng(9)
    data = workdir / "as_they_are"
    for name in ("q1", "q2"):
        write_pair(data, name, rng, shape=(96, 128))
    out = workdir / "out_as_they_are"
    results, stdout = run_ok(
        f"--data_dir={data}", "--misalign=none", "--methods=identity,sift,laplacian,average",
        f"--out_dir={out}", cwd=workdir,
    )
    assert results["config"]["data"]["misalignment"] == "real"
    assert set(results["registration"]["sift"]) == {"psnr", "ssim"}
    assert list(results["fusion"]) == ["laplacian", "average"]
    assert results["registration_by_category"] == {} and results["config"]["success_plot"] is None
    for record in results["per_image"]:
        assert {"registered_vis", "fused_rgb", "panel"} <= set(record["files"])
        for name in record["files"].values():
            assert (out / record["folder"] / name).is_file()
    assert "as they are" in stdout.splitlines()[0]


def test_demo_set_without_input_flags_is_labelled_simulated(workdir, weights):
    out = workdir / "out_demo"
    results, stdout = run_ok(f"--weights={weights}", f"--out_dir={out}", "--demo_images=chelsea", cwd=workdir)
    check_schema(results, out, {*LANDMARK_METRICS, "psnr", "ssim", "epe"}, 1)
    assert results["config"]["data"]["source"] == "demo" and results["config"]["data"]["simulated"]
    assert "SIMULATED" in (out / "results.md").read_text().splitlines()[0]
    assert "SIMULATED" in stdout.splitlines()[0]


def test_bad_input_exits_2_with_one_line_naming_the_file(workdir, weights):
    """Each case ends with one line naming the file (or flag) and exit code 2, before any
    inference, and leaves no output or staging folder behind."""
    rng = np.random.default_rng(8)
    bad = workdir / "bad"
    write_pair(bad, "ok", rng)
    write_png(bad / "nir" / "wide.png", textured(rng, (SHAPE[0], SHAPE[1] + 16)))
    write_pair(bad, "tiny", rng, shape=(4, 4))
    mats = bad / "mats"
    mats.mkdir()
    scipy.io.savemat(mats / "nokeys.mat", {"I_move": np.zeros((20, 20)), "I_fix": np.zeros((20, 20))})
    empty = bad / "empty_mats"
    empty.mkdir()
    grey = np.round(textured(rng) * 255).astype(np.uint8)
    scipy.io.savemat(
        empty / "nolandmarks.mat",
        {"I_move": grey, "I_fix": grey, "LMmove": np.zeros((0, 2)), "LMfix": np.zeros((0, 2))},
    )
    bad_config = bad / "weights"
    bad_config.mkdir()
    config = json.loads((weights / "rfnet.json").read_text())
    config["model"]["affine_input_size"] = "abc"
    (bad_config / "rfnet.json").write_text(json.dumps(config))
    (bad / "a_file").write_text("not a folder")
    earlier = workdir / "earlier_results"  # an earlier results folder, the cwd of its case
    earlier.mkdir()
    (earlier / "results.json").write_text("{}")
    ok_pair = [f"--vis={bad / 'vis' / 'ok.png'}", f"--nir={bad / 'nir' / 'ok.png'}"]
    known = bad / "known" / "urban"
    write_png(known / "0001_rgb.png", np.stack([textured(rng)] * 3, axis=-1))
    write_png(known / "0001_nir.png", textured(rng))
    np.save(known / "0001_nir.npy", np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]]))
    cases = {
        "missing": ([f"--vis={bad / 'vis' / 'gone.png'}", f"--nir={bad / 'nir' / 'ok.png'}"], "gone.png", "not found"),
        "sizes": ([f"--vis={bad / 'vis' / 'ok.png'}", f"--nir={bad / 'nir' / 'wide.png'}"], "wide.png", "sizes differ"),
        "mat": ([f"--landmarks_dir={mats}"], "nokeys.mat", "LMmove"),
        "no_landmarks": ([f"--landmarks_dir={empty}"], "nolandmarks.mat", "LMmove holds no landmarks"),
        "config": ([*ok_pair, f"--weights={bad_config}"], "rfnet.json", '"model.affine_input_size" must be'),
        "tiny": ([f"--vis={bad / 'vis' / 'tiny.png'}", f"--nir={bad / 'nir' / 'tiny.png'}"], "tiny.png",
                 "4x4 px (height x width); RFNet needs at least 5 px a side"),
        "parent_file": ([*ok_pair, f"--out_dir={bad / 'a_file' / 'out'}"], "a_file", "is a file, not a folder"),
        "dot": ([*ok_pair, "--out_dir=."], "earlier_results", "holds the current directory"),
        "flag": (["--misalign=foo"], "--misalign=foo", "value should be one of"),
        "affine": ([f"--data_dir={bad / 'known'}"], "0001_nir.npy", "singular"),
    }
    if Path("/sys").is_dir():  # refuses writes even to root, unlike a folder's mode bits
        cases["not_writable"] = ([*ok_pair, "--out_dir=/sys/rfnet_results"], "/sys", "cannot write in /sys")
    processes = {
        case: evaluate(
            f"--weights={weights}", f"--out_dir={workdir / ('out_' + case)}", *flags,
            cwd=earlier if case == "dot" else workdir,
        )
        for case, (flags, _, _) in cases.items()
    }
    for case, (_, file_name, problem) in cases.items():
        code, _, stderr = finish(processes[case])
        assert code == 2, (case, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (case, stderr)
        assert lines[0].startswith("evaluate.py: error: ") and file_name in lines[0] and problem in lines[0]
        assert not (workdir / f"out_{case}").exists()
        assert not [p for p in workdir.iterdir() if p.name.startswith(f".out_{case}-")]
    assert sorted(p.name for p in earlier.iterdir()) == ["results.json"]
    assert (bad / "a_file").read_text() == "not a folder"


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_evaluation_ends_with_one_line_and_leaves_nothing(workdir, weights, number):
    rng = np.random.default_rng(9)
    data = workdir / f"signal_{number}"
    # Enough pairs that the evaluation is still running when the signal lands: with three,
    # a loaded machine (CI beside other work) let it publish its results first.
    for index in range(12):
        write_pair(data, f"p{index}", rng)
    out = workdir / f"out_signal_{number}"
    process = evaluate(f"--data_dir={data}", f"--weights={weights}", f"--out_dir={out}", cwd=workdir)
    deadline = time.monotonic() + 300
    while not any(p.name.startswith(f".{out.name}-staging-") for p in workdir.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, "no staging folder appeared"
        time.sleep(0.05)
    process.send_signal(number)
    code, _, stderr = finish(process)
    assert code == 128 + number, stderr
    assert stderr.splitlines()[-1] == f"evaluate.py: stopped by {signal.Signals(number).name}"
    assert "Traceback" not in stderr
    assert not out.exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(f".{out.name}-")]


def test_shipped_weights_register_a_demo_pair(workdir):
    """The main job's weights (weights/, the default --weights): the coarse module with
    its test-time refinement recovers a known synthetic affine of a demo pair, at least
    ten times closer than the unaligned input, and the refinement is in effect."""
    out = workdir / "out_shipped"
    results, _ = run_ok(
        f"--out_dir={out}", "--demo_images=coffee", "--misalign=affine", "--methods=rfnet_coarse,identity",
        cwd=workdir,
    )
    assert results["config"]["weights"]["path"] == str(REPO_ROOT / "weights")
    assert results["config"]["weights"]["model"]["coarse_refinement_steps"] > 0
    rmse = {method: results["registration"][method]["rmse"]["mean"] for method in ("rfnet_coarse", "identity")}
    assert rmse["identity"] > 10.0 and rmse["rfnet_coarse"] < rmse["identity"] / 10, rmse
