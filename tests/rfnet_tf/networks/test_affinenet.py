"""AffineNet: near the identity at initialisation yet trainable below the head, shapes,
ablation switch, serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import gaussian_filter

from layers import DeformableConv2D, affine_grid, warp_affine
from losses import coarse_loss
from rfnet_tf.networks.affinenet import AffineNet

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


@pytest.mark.parametrize("batch,height,width", [(1, 50, 77), (3, 97, 131)])
def test_near_the_identity_at_initialisation(batch, height, width):
    """Within 1e-2 in normalised units: a fraction of a pixel at the 192 px input."""
    keras.utils.set_random_seed(0)
    model = AffineNet()
    affine = model(tf.random.uniform((batch, height, width, 2)), training=True)
    assert affine.shape == (batch, 2, 3)
    np.testing.assert_allclose(affine.numpy(), np.broadcast_to(IDENTITY, (batch, 2, 3)), atol=1e-2)


def _smooth_pairs(batch: int, size: int, shift_px: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Smooth noise and a copy shifted right by ``shift_px``: moving and fixed."""
    rng = np.random.default_rng(7)
    images = np.stack([gaussian_filter(rng.normal(size=(size, size + 8)), 2.0) for _ in range(batch)])
    images = images.astype(np.float32)[..., None]
    start = int(shift_px)
    return tf.constant(images[:, :, start:start + size]), tf.constant(images[:, :, :size])


@pytest.mark.parametrize("deformable", [True, False])
def test_a_new_network_passes_a_gradient_below_its_head(deformable):
    """Every convolution of a new network receives a gradient from Eq. 4. With a zero
    head kernel none would: the head multiplies every gradient below it, and its own
    gradient averages out while the features carry no information on the
    misalignment, so the network stayed at the identity (weights/README.md)."""
    keras.utils.set_random_seed(1)
    model = AffineNet(deformable=deformable)
    moving, fixed = _smooth_pairs(4, 48, 3.0)
    with tf.GradientTape() as tape:
        affine = model(tf.concat([moving, fixed], axis=-1), training=True)
        loss = coarse_loss(warp_affine(moving, affine)[0], fixed)
    kernels = [conv.kernel for conv, _ in model.stages] + [model.conv7a.kernel, model.conv7b.kernel]
    for kernel, gradient in zip(kernels, tape.gradient(loss, kernels)):
        assert float(tf.norm(gradient)) > 0.0, kernel.path


def test_none_dimensions_in_tf_function():
    model = AffineNet()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32)])
    def predict(pair):
        return model(pair)

    # One trace serves every size, and gives the eager model's affine.
    for shape in [(1, 64, 64, 2), (2, 48, 80, 2)]:
        pair = tf.random.uniform(shape, seed=5)
        np.testing.assert_allclose(predict(pair).numpy(), model(pair).numpy(), atol=1e-5)
    assert predict.experimental_get_tracing_count() == 1


def test_deformable_switch():
    def count_deformable(model):
        return sum(isinstance(layer, DeformableConv2D) for layer in model._flatten_layers())

    deformable = AffineNet(deformable=True)
    plain = AffineNet(deformable=False)
    assert count_deformable(deformable) == 3
    assert count_deformable(plain) == 0
    offset_variables = [v for v in deformable.variable_group if "offset" in v.path]
    assert len(offset_variables) == 6


def test_head_moves_the_affine():
    """A non-zero head gives a non-identity affine: the output is not constant."""
    model = AffineNet()
    kernel = model.head.kernel
    kernel.assign(tf.random.normal(kernel.shape, stddev=0.1, seed=3))
    affine = model(tf.random.uniform((2, 64, 64, 2), seed=4))
    assert np.abs(affine.numpy() - IDENTITY).max() > 1e-4


def test_the_matching_head_runs_in_float32_under_mixed_bfloat16():
    """Its stages run in bfloat16; the correlation, the sharpness and the fit in float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = AffineNet(head="matching")
        pair = tf.random.uniform((2, 64, 64, 2), seed=6)
        affine = model(pair)
    finally:
        keras.config.set_dtype_policy(previous)
    assert affine.dtype == tf.float32 and np.all(np.isfinite(affine.numpy()))
    float32 = AffineNet(head="matching")
    assert float32.dtype_policy.name == "float32"
    float32.set_weights(model.get_weights())
    # The same network in float32 fits nearly the same affine (bfloat16 features).
    np.testing.assert_allclose(affine.numpy(), float32(pair).numpy(), atol=0.05)


def test_head_stays_float32_under_mixed_bfloat16():
    """Under ``mixed_bfloat16`` the affine is float32 and keeps a delta of 1e-4 (2^-13), which
    ``1 + delta`` in bfloat16 (steps of 2^-7 above 1) would round away."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = AffineNet()
    finally:
        keras.config.set_dtype_policy(previous)
    model.head.kernel.assign(tf.zeros_like(model.head.kernel))
    model.head.bias.assign(tf.fill([6], 1e-4))
    affine = model(tf.random.uniform((2, 48, 40, 2), seed=5))
    assert affine.dtype == tf.float32
    np.testing.assert_allclose(affine.numpy(), np.broadcast_to(IDENTITY + 1e-4, (2, 2, 3)), rtol=0,
                               atol=1e-7)


def test_variable_group_is_every_trainable_variable():
    model = AffineNet()
    assert {id(v) for v in model.variable_group} == {id(v) for v in model.trainable_variables}


def test_config_round_trip():
    model = AffineNet(deformable=False, dropout=0.1, head="matching", correlation_radius=5)
    config = model.get_config()
    restored = AffineNet.from_config(config)
    assert restored.get_config() == config
    assert restored.deformable is False and restored.dropout_rate == 0.1
    assert restored.head_kind == "matching" and restored.correlation_radius == 5


@pytest.mark.parametrize("arguments,message", [({"head": "dense"}, "head"),
                                               ({"correlation_radius": 0}, "correlation_radius")])
def test_bad_head_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        AffineNet(**arguments)


def test_the_matching_head_reads_a_shift_with_untrained_features():
    """The matching head matches before it learns: on smooth noise shifted by 12 px (1.5
    cells), a new network's affine moves the sampling the right way by at least half the
    shift and keeps the linear part near the identity; the paper's pooled head predicts
    nearly the identity until it is trained."""
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(7)
    images = np.stack([gaussian_filter(rng.normal(size=(96, 108)), 2.0) for _ in range(2)])
    images = images.astype(np.float32)[..., None]
    moving, fixed = images[:, :, 12:], images[:, :, :96]
    pair = tf.concat([moving, fixed], axis=-1)
    # fixed[:, x] = moving[:, x - 12]: the backward affine samples moving 12 px to the left.
    expected_shift = -2 * 12 / 95
    matched = AffineNet(head="matching")(pair).numpy()
    assert np.all(matched[:, 0, 2] < 0.5 * expected_shift), matched[:, 0, 2]
    assert np.all(np.abs(matched[:, :, :2] - IDENTITY[:, :2]) < 0.1), matched
    pooled = AffineNet()(pair).numpy()
    assert np.all(np.abs(pooled[:, 0, 2]) < 0.1 * abs(expected_shift))


def test_the_matching_head_passes_a_gradient_to_every_variable_and_draws_nothing():
    keras.utils.set_random_seed(1)
    model = AffineNet(head="matching")
    assert model.random_states == []
    moving, fixed = _smooth_pairs(2, 48, 3.0)
    with tf.GradientTape() as tape:
        affine = model(tf.concat([moving, fixed], axis=-1), training=True)
        loss = coarse_loss(warp_affine(moving, affine)[0], fixed)
    gradients = tape.gradient(loss, model.trainable_variables)
    kernels = [v.path for v, g in zip(model.trainable_variables, gradients)
               if g is None or float(tf.norm(g)) == 0.0]
    assert kernels == []
    assert any("log_sharpness" in v.path for v in model.trainable_variables)


def _smooth_texture(size: int, seed: int) -> np.ndarray:
    noise = gaussian_filter(np.random.default_rng(seed).standard_normal((size, size)), 2.0)
    return ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)


def test_recovers_a_known_affine_through_the_whole_gradient_path():
    """AffineNet + warp + coarse_loss finds a 3 degree, ~2 px misalignment to < 1 px.

    The deformable layers must pass gradients: their kernels and offset branches move.
    """
    size = 64
    fixed = tf.constant(_smooth_texture(size, seed=0)[None, ..., None])
    angle = np.deg2rad(3.0)
    misalignment = np.array(
        [[np.cos(angle), -np.sin(angle), 0.06], [np.sin(angle), np.cos(angle), -0.04]], np.float32
    )
    moving, _ = warp_affine(fixed, misalignment[None])
    true_registration = np.linalg.inv(np.vstack([misalignment, [0, 0, 1]]))[:2].astype(np.float32)
    true_points = affine_grid(true_registration[None], size, size).numpy()[0]

    def landmark_error(affine):
        points = affine_grid(affine, size, size).numpy()[0]
        return np.linalg.norm(points - true_points, axis=-1)[8:-8, 8:-8].mean()

    keras.utils.set_random_seed(0)
    model = AffineNet()
    # Every layer learns from the first step (the head is not zero), so a rate of 1e-3
    # jumps out of the image on this single pair.
    optimizer = keras.optimizers.Adam(3e-4)
    pair = tf.concat([moving, fixed], axis=-1)
    deformable = [layer for layer in model._flatten_layers() if isinstance(layer, DeformableConv2D)]
    before = [layer.offset_kernel.numpy().copy() for layer in deformable]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            affine = model(pair, training=False)
            warped, mask = warp_affine(moving, affine)
            loss = coarse_loss(warped, fixed, mask)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))

    initial_error = landmark_error(IDENTITY[None])
    for _ in range(40):
        step()
    final_error = landmark_error(model(pair, training=False))
    assert initial_error > 2.0
    assert final_error < 1.0, (initial_error, final_error)
    for layer, kernel in zip(deformable, before):
        assert np.abs(layer.offset_kernel.numpy() - kernel).max() > 0.0
