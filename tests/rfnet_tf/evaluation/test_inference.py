"""Inference: what a weights path holds, and predictors that reproduce the Keras model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from rfnet_tf import baselines
from rfnet_tf.evaluation import inference
from rfnet_tf.metrics.registration import affine_to_pixel_matrix
from rfnet_tf.networks.rfnet import FINE_MIN_GAIN
from rfnet_tf.weights import WeightsError


def test_inspect_weights_recognises_every_format(weights_dirs, tmp_path):
    full = inference.inspect_weights(weights_dirs["full"])
    assert (full.format, full.has_full, full.has_coarse) == ("weights", True, True)
    coarse = inference.inspect_weights(weights_dirs["coarse"])
    assert coarse.parts == ("transnet", "affinenet") and coarse.has_coarse and not coarse.has_full
    # A training stage directory holds its weights in export/.
    stage = tmp_path / "stage"
    (stage / "export").mkdir(parents=True)
    for file in weights_dirs["coarse"].iterdir():
        (stage / "export" / file.name).write_bytes(file.read_bytes())
    assert inference.inspect_weights(stage).path == stage / "export"
    fake_saved_model = tmp_path / "sm"
    fake_saved_model.mkdir()
    (fake_saved_model / "saved_model.pb").write_bytes(b"")
    saved_model = inference.inspect_weights(fake_saved_model)
    assert saved_model.format == "saved_model" and saved_model.has_full and not saved_model.has_fine
    with pytest.raises(WeightsError, match="no such directory"):
        inference.inspect_weights(tmp_path / "missing")
    with pytest.raises(WeightsError, match="SavedModel"):
        inference.inspect_weights(tmp_path)


def test_a_transnet_only_export_cannot_run(weights_dirs, tmp_path):
    only = tmp_path / "transnet_only"
    only.mkdir()
    config = json.loads((weights_dirs["full"] / "rfnet.json").read_text())
    config["parts"] = ["transnet"]
    (only / "rfnet.json").write_text(json.dumps(config))
    (only / "transnet.weights.h5").write_bytes((weights_dirs["full"] / "transnet.weights.h5").read_bytes())
    info = inference.inspect_weights(only)
    assert not info.has_coarse
    with pytest.raises(WeightsError, match=r"coarse module\) or \['f2m'\]"):
        inference.load_predictor(info)


def test_full_predictor_reproduces_the_keras_model(weights_dirs, untrained_model, rng):
    predictor = inference.load_predictor(inference.inspect_weights(weights_dirs["full"]))
    assert predictor.is_full
    for shape in [(40, 56), (47, 61)]:  # two sizes through one trace
        vis = rng.random((*shape, 3)).astype(np.float32)
        nir = rng.random((*shape, 1)).astype(np.float32)
        result = predictor(vis, nir)
        expected = untrained_model([vis[None], nir[None]], training=False)
        assert set(result) == set(inference.FULL_OUTPUTS)
        for key in inference.FULL_OUTPUTS:
            np.testing.assert_allclose(result[key], expected[key].numpy()[0], atol=1e-5)
    grey = predictor(vis[..., :1], nir)
    expected = untrained_model([np.repeat(vis[None, ..., :1], 3, -1), nir[None]], training=False)
    np.testing.assert_allclose(grey["fused"], expected["fused"].numpy()[0], atol=1e-5)


def test_coarse_predictor_runs_the_coarse_module(weights_dirs, untrained_model, rng):
    predictor = inference.load_predictor(inference.inspect_weights(weights_dirs["coarse"]))
    assert not predictor.is_full and predictor.outputs == inference.COARSE_OUTPUTS
    vis = rng.random((36, 44, 3)).astype(np.float32)
    nir = rng.random((36, 44, 1)).astype(np.float32)
    result = predictor(vis, nir)
    expected = untrained_model.coarse(tf.constant(vis[None]), tf.constant(nir[None]))
    np.testing.assert_allclose(result["affine"], expected["affine"].numpy()[0], atol=1e-6)
    np.testing.assert_allclose(result["registered_coarse"], expected["registered"].numpy()[0], atol=1e-6)


def test_the_fine_call_is_rfnet_fine_and_needs_f2m_only(weights_dirs, untrained_model, rng):
    vis = rng.random((36, 44, 3)).astype(np.float32)
    nir = rng.random((36, 44, 1)).astype(np.float32)
    expected = untrained_model.fine(tf.constant(vis[None]), tf.constant(nir[None]))
    assert np.abs(expected["flow"].numpy()).max() > 0.01
    full = inference.load_predictor(inference.inspect_weights(weights_dirs["full"]))
    only = inference.inspect_weights(weights_dirs["f2m"])
    assert only.has_fine and not only.has_coarse
    f2m_alone = inference.load_predictor(only)
    for predictor in (full, f2m_alone):
        result = predictor(vis, nir, inference.FINE_CALL)
        assert set(result) == set(inference.FINE_OUTPUTS)
        for key in inference.FINE_OUTPUTS:
            np.testing.assert_allclose(result[key], expected[key].numpy()[0], atol=1e-5, err_msg=key)
    with pytest.raises(ValueError, match="cannot run rfnet$"):
        f2m_alone(vis, nir)
    coarse = inference.load_predictor(inference.inspect_weights(weights_dirs["coarse"]))
    with pytest.raises(ValueError, match="cannot run rfnet_fine"):
        coarse(vis, nir, inference.FINE_CALL)


def test_the_sift_call_passes_the_sift_estimate_as_a_start(weights_dirs, untrained_model, rng):
    """A textured pair shifted by a few pixels: SIFT finds the shift and the coarse
    module's search starts from it too (the call's confidence equals RFNet.coarse with
    that start); the call returns SIFT's estimate where it agrees with the search's
    result within SIFT_AGREEMENT_PX, the search's otherwise; on a pair without features
    SIFT fails and the call is the model's own."""
    from scipy.ndimage import gaussian_filter, shift

    texture = gaussian_filter(rng.standard_normal((96, 128)), 1.5)
    texture = ((texture - texture.min()) / (texture.max() - texture.min())).astype(np.float32)
    vis = np.repeat(shift(texture, (3.0, -4.0), mode="reflect")[..., None], 3, axis=-1)
    nir = texture[..., None]
    predictor = inference.load_predictor(inference.inspect_weights(weights_dirs["coarse"]))
    result = predictor(vis, nir, inference.COARSE_SIFT_CALL)
    assert set(result) == set(inference.COARSE_SIFT_OUTPUTS) and not result["sift_failed"]
    estimate = baselines.sift_affine(
        np.asarray(vis[..., 0], np.float64) * 255.0, np.asarray(texture, np.float64) * 255.0
    )
    expected = untrained_model.coarse(
        tf.constant(vis[None]), tf.constant(nir[None]),
        extra_starts=tf.constant(estimate.theta[None, None], tf.float32),
    )
    searched = expected["affine"].numpy()[0]
    corners_xy1 = np.array([[0.0, 0.0, 1.0], [127.0, 0.0, 1.0], [0.0, 95.0, 1.0], [127.0, 95.0, 1.0]])
    difference = affine_to_pixel_matrix(estimate.theta, (96, 128)) - affine_to_pixel_matrix(searched, (96, 128))
    apart = np.linalg.norm(corners_xy1 @ difference.T, axis=-1).max()
    assert result["sift_kept"] == (apart <= inference.SIFT_AGREEMENT_PX)
    kept = estimate.theta if result["sift_kept"] else searched
    np.testing.assert_allclose(result["affine"], kept, atol=1e-5)
    np.testing.assert_allclose(result["coarse_ncc"], expected["coarse_ncc"].numpy()[0], atol=1e-5)
    # The moving mask reaches SIFT: with no VIS content marked there are no keypoints.
    masked = predictor(vis, nir, inference.COARSE_SIFT_CALL, moving_mask=np.zeros((96, 128), bool))
    assert masked["sift_failed"] and not masked["sift_kept"]
    flat = np.full((48, 64, 3), 0.5, np.float32)
    failed = predictor(flat, flat[..., :1], inference.COARSE_SIFT_CALL)
    assert failed["sift_failed"]
    np.testing.assert_array_equal(failed["affine"], predictor(flat, flat[..., :1])["affine"])


def test_refinement_steps_override_the_stored_ones(weights_dirs, tmp_path):
    info = inference.inspect_weights(weights_dirs["coarse"])
    stored = json.loads((weights_dirs["coarse"] / "rfnet.json").read_text())["model"]
    assert inference.load_predictor(info).model_config == stored
    overridden = inference.load_predictor(info, coarse_refinement_steps=7).model_config
    assert overridden == dict(stored, coarse_refinement_steps=7)
    assert inference.load_predictor(info, fine_guard="on").model_config == dict(
        stored, fine_min_gain=FINE_MIN_GAIN
    )
    assert inference.load_predictor(info, fine_guard="off").model_config == dict(stored, fine_min_gain=None)
    fake_saved_model = tmp_path / "sm"
    fake_saved_model.mkdir()
    (fake_saved_model / "saved_model.pb").write_bytes(b"")
    with pytest.raises(WeightsError, match="fixed when it was exported"):
        inference.load_predictor(inference.inspect_weights(fake_saved_model), coarse_refinement_steps=0)
