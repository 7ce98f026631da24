"""losses.registration: NCC (Eq. 5), L_coarse (Eq. 4), L_TransNet (Eqs. 1-2), NCCLoss."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from losses.registration import NCCLoss, coarse_loss, multiscale_coarse_loss, ncc, transnet_loss
from losses.weights import LossWeights

SPEC_1 = tf.TensorSpec([None, None, None, 1], tf.float32)


def _random_mask(rng, shape, p_valid=0.7):
    return (rng.random(shape) < p_valid).astype(np.float32)


def _ncc_reference(s, g, mask=None, eps=1e-5):
    """Eq. 5 per image over the valid pixels (all channels), in float64."""
    values = []
    for b in range(s.shape[0]):
        valid = np.ones(s.shape[1:3], bool) if mask is None else mask[b, ..., 0] > 0
        sv = s[b][valid].astype(np.float64).ravel()
        gv = g[b][valid].astype(np.float64).ravel()
        ds, dg = sv - sv.mean(), gv - gv.mean()
        values.append(np.mean(ds * dg) / (np.sqrt(np.mean(ds**2) + eps) * np.sqrt(np.mean(dg**2) + eps)))
    return np.array(values)


def _masked_l1_reference(a, b, mask=None):
    """Mean |a - b| over each image's valid pixels, then over the batch."""
    err = np.abs(a.astype(np.float64) - b)
    if mask is None:
        return err.mean()
    return np.mean([err[i][mask[i, ..., 0] > 0].mean() for i in range(err.shape[0])])


# --- NCC (Eq. 5) ------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("use_mask", [False, True])
def test_ncc_matches_numpy(rng, channels, use_mask):
    s = rng.random((3, 6, 7, channels)).astype(np.float32)
    g = (0.6 * s + 0.4 * rng.random(s.shape)).astype(np.float32)
    mask = _random_mask(rng, (3, 6, 7, 1)) if use_mask else None
    np.testing.assert_allclose(ncc(s, g, mask=mask).numpy(), _ncc_reference(s, g, mask), rtol=1e-5, atol=1e-6)


def test_ncc_of_identical_images_is_one(rng):
    s = rng.random((2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(ncc(s, s, eps=0.0), 1.0, atol=1e-6)
    # The default eps shrinks it by about eps / variance (variance 1/12 here).
    np.testing.assert_allclose(ncc(s, s), 1.0, atol=1e-3)


@pytest.mark.parametrize("scale, offset", [(0.5, 0.3), (3.0, -0.7)])
def test_ncc_is_invariant_to_positive_affine_intensity_changes(rng, scale, offset):
    s = rng.random((2, 8, 9, 1)).astype(np.float32)
    g = rng.random((2, 8, 9, 1)).astype(np.float32)
    mask = _random_mask(rng, (2, 8, 9, 1))
    np.testing.assert_allclose(
        ncc(scale * s + offset, g, mask=mask, eps=0.0), ncc(s, g, mask=mask, eps=0.0), atol=1e-5
    )


def test_ncc_of_an_inverted_image_is_minus_one(rng):
    s = rng.random((2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(ncc(1.0 - s, s, eps=0.0), -1.0, atol=1e-6)


def test_ncc_ignores_masked_pixels(rng):
    s = rng.random((2, 8, 8, 1)).astype(np.float32)
    g = rng.random((2, 8, 8, 1)).astype(np.float32)
    mask = _random_mask(rng, (2, 8, 8, 1))
    s_changed = np.where(mask > 0, s, 50.0 * rng.standard_normal(s.shape)).astype(np.float32)
    g_changed = np.where(mask > 0, g, -7.0).astype(np.float32)
    np.testing.assert_allclose(ncc(s_changed, g_changed, mask=mask), ncc(s, g, mask=mask), rtol=1e-6, atol=1e-7)
    # And masked pixels matter without the mask (the test above can fail).
    assert not np.allclose(ncc(s_changed, g_changed), ncc(s, g), atol=1e-3)


def test_ncc_of_a_constant_image_is_finite_with_finite_gradients(rng):
    constant = tf.constant(np.full((2, 6, 6, 1), 0.4, np.float32))
    g = tf.constant(rng.random((2, 6, 6, 1)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([constant, g])
        value = ncc(constant, g)
        both_constant = ncc(constant, constant)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)
    np.testing.assert_allclose(both_constant, 0.0, atol=1e-6)
    for grad in tape.gradient(value, [constant, g]) + tape.gradient(both_constant, [constant]):
        assert np.all(np.isfinite(grad.numpy()))


def test_ncc_of_an_image_without_valid_pixels_is_zero(rng):
    s = rng.random((2, 5, 5, 1)).astype(np.float32)
    mask = np.ones_like(s)
    mask[1] = 0.0
    value = ncc(s, s, mask=mask).numpy()
    assert value[0] > 0.99 and value[1] == 0.0


def test_ncc_gradient_matches_finite_differences(rng):
    s = tf.constant(rng.random((2, 4, 5, 1)), tf.float64)
    g = tf.constant(rng.random((2, 4, 5, 1)), tf.float64)
    mask = tf.constant(_random_mask(rng, (2, 4, 5, 1), p_valid=0.8), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(lambda x: ncc(x, g, mask=mask), [s])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


def test_ncc_works_in_tf_function_with_unknown_dims(rng):
    s = rng.random((2, 6, 7, 1)).astype(np.float32)
    g = rng.random((2, 6, 7, 1)).astype(np.float32)
    mask = _random_mask(rng, (2, 6, 7, 1))
    graph_ncc = tf.function(lambda a, b, m: ncc(a, b, mask=m), input_signature=[SPEC_1] * 3)
    np.testing.assert_allclose(graph_ncc(s, g, mask), ncc(s, g, mask=mask), rtol=1e-6)


# --- L_coarse (Eq. 4) ------------------------------------------------------------


def test_coarse_loss_is_minus_the_batch_mean_ncc(rng):
    warped = rng.random((3, 6, 6, 1)).astype(np.float32)
    fixed = (0.5 * warped + 0.5 * rng.random(warped.shape)).astype(np.float32)
    mask = _random_mask(rng, (3, 6, 6, 1))
    np.testing.assert_allclose(coarse_loss(warped, fixed, mask=mask), -_ncc_reference(warped, fixed, mask).mean(), rtol=1e-5)


def test_overlap_weighted_coarse_loss_scales_each_ncc_by_its_valid_share(rng):
    """Against numpy: -mean(NCC_b * valid share_b); without a mask every share is 1."""
    warped = rng.random((3, 6, 6, 1)).astype(np.float32)
    fixed = (0.5 * warped + 0.5 * rng.random(warped.shape)).astype(np.float32)
    mask = _random_mask(rng, (3, 6, 6, 1))
    shares = mask.reshape(3, -1).mean(axis=1)
    expected = -(_ncc_reference(warped, fixed, mask) * shares).mean()
    np.testing.assert_allclose(
        coarse_loss(warped, fixed, mask=mask, overlap_weighted=True), expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        coarse_loss(warped, fixed, overlap_weighted=True), coarse_loss(warped, fixed), rtol=1e-6
    )
    # Half the frame with the same NCC scores half as well.
    half = np.ones_like(mask)
    half[:, :3] = 0.0
    full_ncc = float(coarse_loss(warped, fixed, mask=half))
    np.testing.assert_allclose(
        coarse_loss(warped, fixed, mask=half, overlap_weighted=True), 0.5 * full_ncc, rtol=1e-5
    )


def test_coarse_loss_gradient_is_finite(rng):
    warped = tf.constant(rng.random((2, 6, 6, 1)).astype(np.float32))
    fixed = rng.random((2, 6, 6, 1)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(warped)
        loss = coarse_loss(warped, fixed)
    grad = tape.gradient(loss, warped).numpy()
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


# --- L_TransNet (Eqs. 1-2) -------------------------------------------------------


def _transnet_inputs(rng, shape=(2, 6, 7, 1)):
    names = ["vis", "nir", "vis_recon", "nir_recon", "vis_to_nir", "nir_to_vis"]
    return {name: rng.random(shape).astype(np.float32) for name in names}


@pytest.mark.parametrize("use_mask", [False, True])
def test_transnet_loss_matches_numpy(rng, use_mask):
    x = _transnet_inputs(rng)
    mask = _random_mask(rng, (2, 6, 7, 1)) if use_mask else None
    terms = transnet_loss(**x, weights=LossWeights(eta=1.5), mask=mask)
    recon = _masked_l1_reference(x["vis"], x["vis_recon"], mask) + _masked_l1_reference(x["nir"], x["nir_recon"], mask)
    trans = _masked_l1_reference(x["vis"], x["nir_to_vis"], mask) + _masked_l1_reference(x["nir"], x["vis_to_nir"], mask)
    assert set(terms) == {"total", "recon", "trans"}
    np.testing.assert_allclose(terms["recon"], recon, rtol=1e-5)
    np.testing.assert_allclose(terms["trans"], trans, rtol=1e-5)
    np.testing.assert_allclose(terms["total"], recon + 1.5 * trans, rtol=1e-5)


def test_transnet_loss_pairs_each_translation_with_its_target_domain(rng):
    x = _transnet_inputs(rng)
    x["vis_to_nir"] = x["nir"].copy()
    x["nir_to_vis"] = x["vis"].copy()
    assert float(transnet_loss(**x)["trans"]) == 0.0


def test_transnet_loss_ignores_masked_pixels(rng):
    x = _transnet_inputs(rng)
    mask = _random_mask(rng, (2, 6, 7, 1))
    changed = {k: np.where(mask > 0, v, rng.random(v.shape) * 5).astype(np.float32) for k, v in x.items()}
    np.testing.assert_allclose(transnet_loss(**changed, mask=mask)["total"], transnet_loss(**x, mask=mask)["total"], rtol=1e-6)


def test_transnet_loss_rejects_an_rgb_against_a_luma(rng):
    x = _transnet_inputs(rng)
    x["vis"] = rng.random((2, 6, 7, 3)).astype(np.float32)
    with pytest.raises(ValueError):
        transnet_loss(**x)


def test_transnet_loss_gradients_are_finite_and_in_tf_function(rng):
    x = {k: tf.constant(v) for k, v in _transnet_inputs(rng).items()}
    predictions = ["vis_recon", "nir_recon", "vis_to_nir", "nir_to_vis"]

    @tf.function(input_signature=[SPEC_1] * 6)
    def loss_and_grads(vis, nir, vis_recon, nir_recon, vis_to_nir, nir_to_vis):
        with tf.GradientTape() as tape:
            outputs = [vis_recon, nir_recon, vis_to_nir, nir_to_vis]
            tape.watch(outputs)
            total = transnet_loss(vis, nir, *outputs)["total"]
        return total, tape.gradient(total, outputs)

    total, grads = loss_and_grads(**x)
    np.testing.assert_allclose(total, transnet_loss(**x)["total"], rtol=1e-6)
    assert len(grads) == len(predictions)
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)


# --- NCCLoss ---------------------------------------------------------------------


def test_ncc_loss_equals_coarse_loss(rng):
    fixed = rng.random((3, 6, 6, 1)).astype(np.float32)
    warped = (0.7 * fixed + 0.3 * rng.random(fixed.shape)).astype(np.float32)
    np.testing.assert_allclose(NCCLoss()(fixed, warped), coarse_loss(warped, fixed), rtol=1e-6)
    per_image = NCCLoss(reduction=None)(fixed, warped)
    np.testing.assert_allclose(per_image, -_ncc_reference(warped, fixed), rtol=1e-5)


def test_ncc_loss_config_is_exactly_the_constructor_arguments():
    loss = NCCLoss(eps=1e-3, name="coarse", reduction="sum")
    config = loss.get_config()
    assert set(config) == set(inspect.signature(NCCLoss.__init__).parameters) - {"self"}
    assert config == {"eps": 1e-3, "name": "coarse", "reduction": "sum"}
    assert NCCLoss.from_config(config).get_config() == config


def test_ncc_loss_serialisation_round_trip(rng):
    loss = NCCLoss(eps=1e-3, name="coarse")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, NCCLoss) and restored.get_config() == loss.get_config()
    fixed = rng.random((2, 5, 5, 1)).astype(np.float32)
    warped = rng.random((2, 5, 5, 1)).astype(np.float32)
    np.testing.assert_allclose(restored(fixed, warped), loss(fixed, warped), rtol=1e-6)


# --- Multi-scale extension of Eq. 4 -----------------------------------------------


@pytest.mark.parametrize("scales", [1, 3])
def test_multiscale_coarse_loss_averages_eq_4_over_pooled_levels(rng, scales):
    """Against numpy: the mean of -NCC over ``scales`` levels of 2x2 mean pooling (the
    mask min-pooled); one scale is the paper's Eq. 4."""
    s, g = rng.random((2, 2, 12, 8, 1)).astype(np.float32)
    mask = (rng.random((2, 12, 8, 1)) > 0.1).astype(np.float32)

    def pool(x, reduce):
        b, h, w, c = x.shape
        return reduce(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))

    levels = [(s, g, mask)]
    for _ in range(scales - 1):
        a, b, m = levels[-1]
        levels.append((pool(a, np.mean), pool(b, np.mean), pool(m, np.min)))
    expected = np.mean([-_ncc_reference(a, b, m, 1e-5).mean() for a, b, m in levels])
    np.testing.assert_allclose(multiscale_coarse_loss(s, g, mask, scales=scales), expected, atol=1e-5)
    with pytest.raises(ValueError):
        multiscale_coarse_loss(s, g, mask, scales=0)
