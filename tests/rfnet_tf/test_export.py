"""Export: the SavedModel, loaded in a fresh process, reproduces the Keras RFNet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from rfnet_tf import export
from rfnet_tf.networks import RFNet
from rfnet_tf.staging import DestinationError
from rfnet_tf.weights import export_weights

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYS = ("registered_coarse", "registered", "fused", "fused_rgb", "affine", "flow", "mask",
        "coarse_ncc", "coarse_overlap", "coarse_unsure", "fine_gain", "fine_kept")
BOOL_KEYS = ("coarse_unsure", "fine_kept")
SIZES = ((40, 56), (53, 71))

# Runs in a fresh interpreter outside the repository (so it cannot import rfnet_tf):
# loads the SavedModel with TensorFlow alone and runs the serving signature on each size.
LOADER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    saved_model, inputs, outputs = sys.argv[1:4]
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    data = np.load(inputs)
    results = {}
    for index in range(len(data.files) // 2):
        out = serve(vis=tf.constant(data[f"vis{index}"]), nir=tf.constant(data[f"nir{index}"]))
        results.update({f"{key}{index}": value.numpy() for key, value in out.items()})
    np.savez(outputs, **results)
    """
)


def run(args, cwd, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def model() -> RFNet:
    """An untrained RFNet with small random affine and flow heads: its flow is not zero,
    so the comparison is not trivially the identity. Its test-time refinement is on, so
    the SavedModel also carries that search (whose guards return the identity on these
    noise images, where nothing beats it)."""
    network = RFNet(affine_input_size=32, coarse_refinement_steps=2, coarse_refinement_levels=2)
    generator = np.random.default_rng(3)
    for head, scale in ((network.affinenet.head, 0.02), (network.f2m.deformation_block.head, 0.05)):
        for variable in (head.kernel, head.bias):
            variable.assign(scale * generator.standard_normal(variable.shape).astype(np.float32))
    return network


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> tuple[Path, str]:
    """``(SavedModel directory, stdout)`` of ``python -m rfnet_tf.export`` on ``model``'s weights."""
    root = tmp_path_factory.mktemp("export")
    weights = export_weights(model, root / "weights", ("transnet", "affinenet", "f2m"))
    saved_model = root / "exported" / "rfnet"
    cli = run([sys.executable, "-m", "rfnet_tf.export", f"--weights={weights}", f"--out={saved_model}"], REPO_ROOT)
    assert cli.returncode == 0, cli.stderr
    return saved_model, cli.stdout


@pytest.fixture(scope="module")
def serve(exported):
    """The SavedModel's ``serving_default``, loaded in this process."""
    return export.load_serving_function(exported[0])


def test_cli_writes_a_saved_model_and_prints_its_signature(exported):
    saved_model, stdout = exported
    assert "vis: float32 [None, None, None, 3]" in stdout
    assert "nir: float32 [None, None, None, 1]" in stdout
    for key in KEYS:
        assert f"    {key}: {'bool' if key in BOOL_KEYS else 'float32'}" in stdout
    assert export.is_saved_model(saved_model)
    assert sorted(path.name for path in saved_model.parent.iterdir()) == ["rfnet"]  # no staging left


def test_saved_model_matches_keras_in_a_fresh_process(model, exported, tmp_path, rng):
    saved_model, _ = exported
    inputs = {}
    for index, (height, width) in enumerate(SIZES):
        inputs[f"vis{index}"] = rng.random((1, height, width, 3), dtype=np.float32)
        inputs[f"nir{index}"] = rng.random((1, height, width, 1), dtype=np.float32)
    np.savez(tmp_path / "inputs.npz", **inputs)
    loader = run(
        [sys.executable, "-c", LOADER, str(saved_model), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        tmp_path,
    )
    assert loader.returncode == 0, loader.stderr
    loaded = np.load(tmp_path / "out.npz")
    for index in range(len(SIZES)):
        expected = model([inputs[f"vis{index}"], inputs[f"nir{index}"]], training=False)
        assert np.abs(expected["flow"].numpy()).max() > 1e-3
        for key in KEYS:
            actual = loaded[f"{key}{index}"]
            assert actual.shape == tuple(expected[key].shape)
            # float32 round-off of two separately built graphs: a few 1e-5.
            np.testing.assert_allclose(actual, expected[key].numpy(), atol=5e-5, rtol=0)


def test_evaluate_runs_the_saved_model(model, exported, tmp_path, rng):
    """evaluate.py --weights accepts the SavedModel: its RFNet rows come from the model
    (the random flow head moves the landmarks, so rfnet differs from identity; the coarse
    search keeps the identity on noise, and its confidence outputs reach results.json)."""
    saved_model, _ = exported
    vis = rng.random((48, 64, 3))
    nir = vis @ np.array([0.6, 0.3, 0.1])
    for folder, image in (("vis", vis), ("nir", nir)):
        (tmp_path / "data" / folder).mkdir(parents=True)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp_path / "data" / folder / "p.png")
    out = tmp_path / "out"
    result = run(
        [sys.executable, str(REPO_ROOT / "evaluate.py"), f"--data_dir={tmp_path / 'data'}", "--misalign=affine",
         f"--weights={saved_model}", f"--out_dir={out}", "--methods=rfnet,rfnet_coarse,identity,average"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["weights"]["format"] == "saved_model"
    registration = results["per_image"][0]["registration"]
    assert registration["rfnet"]["rmse"] != registration["identity"]["rmse"]
    assert registration["rfnet_coarse"]["unsure"] in (True, False)
    assert set(results["fusion"]) == {"rfnet", "average"}


def test_serving_refuses_mismatched_inputs_naming_both_shapes(serve):
    """The SavedModel carries RFNet's input check (tests/rfnet_tf/networks/test_rfnet.py)."""
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"vis shape \[2 20 24 3\] and nir shape \[1 20 22 1\]"):
        serve(vis=tf.zeros((2, 20, 24, 3)), nir=tf.zeros((1, 20, 22, 1)))


def test_cli_bad_weights_config_is_one_line_and_exit_2(model, tmp_path):
    weights = export_weights(model, tmp_path / "weights", ("transnet", "affinenet", "f2m"))
    config = json.loads((weights / "rfnet.json").read_text())
    config["model"]["affine_input_size"] = "abc"
    (weights / "rfnet.json").write_text(json.dumps(config))
    cli = run([sys.executable, "-m", "rfnet_tf.export", f"--weights={weights}", f"--out={tmp_path / 'out'}"], REPO_ROOT)
    assert cli.returncode == 2
    assert cli.stderr.strip().splitlines() == [
        f"rfnet_tf.export: error: {weights / 'rfnet.json'}: \"model.affine_input_size\" must be an integer "
        ">= 8, got 'abc'"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["weights"]


def test_export_refuses_to_replace_a_directory_that_is_not_a_saved_model(model, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(DestinationError, match="not a SavedModel"):
        export.export_saved_model(model, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "precious"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.txt"]
