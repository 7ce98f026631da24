"""F2M: zero flow at initialisation, a given flow, shared layers, variable groups, frozen
statistics."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import gaussian_filter

from layers import warp_flow
from losses import deformation_loss, fusion_loss
from rfnet_tf.networks.f2m import F2M


@pytest.fixture(scope="module")
def f2m():
    model = F2M()
    return model


@pytest.mark.parametrize("batch,height,width", [(1, 50, 77), (3, 97, 131)])
def test_shapes_and_zero_flow_at_initialisation(f2m, batch, height, width):
    vis = tf.random.uniform((batch, height, width, 1), seed=5)
    nir = tf.random.uniform((batch, height, width, 1), seed=6)
    outputs = f2m([vis, nir], training=True)
    assert outputs["fused"].shape == (batch, height, width, 1)
    assert outputs["flow"].shape == (batch, height, width, 2)
    assert outputs["mask"].shape == (batch, height, width, 1)
    np.testing.assert_array_equal(outputs["flow"].numpy(), 0.0)
    np.testing.assert_allclose(outputs["registered"].numpy(), vis.numpy(), atol=1e-6)
    np.testing.assert_array_equal(outputs["mask"].numpy(), 1.0)
    fused = outputs["fused"].numpy()
    assert np.all((fused > 0.0) & (fused < 1.0))


def test_none_dimensions_in_tf_function(f2m):
    spec = tf.TensorSpec([None, None, None, 1], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def fuse(vis, nir):
        return f2m([vis, nir])["fused"]

    # One trace serves every size, and gives the eager model's fused image.
    for shape in [(1, 50, 77, 1), (2, 33, 40, 1)]:
        vis, nir = tf.random.uniform(shape, seed=1), tf.random.uniform(shape, seed=2)
        np.testing.assert_allclose(fuse(vis, nir).numpy(), f2m([vis, nir])["fused"].numpy(), atol=1e-5)
    assert fuse.experimental_get_tracing_count() == 1


def test_attention_window_changes_only_images_larger_than_the_window(rng):
    windowed = F2M(attention_window=16)
    # Random attention MLPs, so that the pooled maxima matter.
    for variable in windowed.attention.trainable_weights:
        variable.assign(rng.normal(0.0, 0.5, variable.shape))
    paper = F2M()
    paper.set_weights(windowed.get_weights())
    restored = F2M.from_config(windowed.get_config())
    assert restored.attention.max_pool_window == 16 and paper.attention.max_pool_window is None
    fuse = lambda model, image: model([image, image[..., ::-1, :]])["fused"].numpy()
    crop = tf.random.uniform((2, 16, 16, 1), seed=3)
    np.testing.assert_array_equal(fuse(windowed, crop), fuse(paper, crop))
    large = tf.random.uniform((1, 64, 48, 1), seed=4)
    assert np.abs(fuse(windowed, large) - fuse(paper, large)).max() > 1e-4


def test_flow_is_bounded(f2m):
    model = F2M(max_displacement=3.0)
    head = model.deformation_block.head
    head.kernel.assign(tf.random.normal(head.kernel.shape, stddev=50.0, seed=7))
    flow = model([tf.random.uniform((1, 40, 40, 1)), tf.random.uniform((1, 40, 40, 1))])["flow"]
    assert np.abs(flow.numpy()).max() <= 3.0
    assert np.abs(flow.numpy()).max() > 1.0


def test_a_given_flow_replaces_the_deformation_blocks(rng):
    model = F2M()
    head = model.deformation_block.head
    head.kernel.assign(rng.normal(0.0, 0.05, head.kernel.shape))
    vis = tf.random.uniform((2, 32, 40, 1), seed=12)
    nir = tf.random.uniform((2, 32, 40, 1), seed=13)
    own = model([vis, nir])
    assert np.abs(own["flow"].numpy()).max() > 0.1
    # Its own flow, given, reproduces its outputs (32 x 40 needs no padding).
    again = model([vis, nir], flow=own["flow"])
    for key in own:
        np.testing.assert_allclose(again[key].numpy(), own[key].numpy(), atol=1e-6, err_msg=key)
    # Another flow is used as given: returned, and warping the VIS and the fusion alike.
    given = tf.constant(rng.normal(0.0, 2.0, (2, 32, 40, 2)), tf.float32)
    out = model([vis, nir], flow=given)
    np.testing.assert_array_equal(out["flow"].numpy(), given.numpy())
    registered, mask = warp_flow(vis, given, padding_mode="border")
    np.testing.assert_allclose(out["registered"].numpy(), registered.numpy(), atol=1e-6)
    np.testing.assert_array_equal(out["mask"].numpy(), mask.numpy())
    assert np.abs(out["fused"].numpy() - own["fused"].numpy()).max() > 1e-3
    # A size that F2M pads: the given flow is padded along and comes back cropped.
    odd = tf.random.uniform((1, 29, 35, 1), seed=14)
    flow = tf.constant(rng.normal(0.0, 1.0, (1, 29, 35, 2)), tf.float32)
    out = model([odd, odd], flow=flow)
    assert out["fused"].shape == (1, 29, 35, 1)
    np.testing.assert_array_equal(out["flow"].numpy(), flow.numpy())


@pytest.mark.parametrize("height,width", [(32, 40), (29, 35)])
def test_predict_flow_is_the_calls_own_flow(rng, height, width):
    """``predict_flow`` returns the flow a call computes itself, also at a size F2M pads."""
    model = F2M()
    head = model.deformation_block.head
    head.kernel.assign(rng.normal(0.0, 0.05, head.kernel.shape))
    vis = tf.random.uniform((2, height, width, 1), seed=15)
    nir = tf.random.uniform((2, height, width, 1), seed=16)
    flow = model.predict_flow([vis, nir])
    assert np.abs(flow.numpy()).max() > 0.1
    np.testing.assert_allclose(flow.numpy(), model([vis, nir])["flow"].numpy(), atol=1e-6)


def test_jitter_offsets_the_vis_features_beyond_the_flow_and_the_nir_features(rng):
    """``jitter`` rows ``u`` (VIS) and ``v`` (NIR): the VIS features are sampled at
    ``p + flow + u``, which fuses as the flow ``flow + u`` does; the NIR features at
    ``p + v``, which for an integer ``v`` fuses as the NIR translated by ``v`` does
    (the NIR's content lies inside a constant frame, so the translation moves no
    content across the border and the attention's global statistics stay). ``flow``,
    ``registered`` and ``mask`` leave the jitter out."""
    model = F2M()
    vis = tf.random.uniform((1, 32, 40, 1), seed=21)
    content = tf.random.uniform((1, 16, 24, 1), seed=22)
    nir = tf.pad(content, [[0, 0], [8, 8], [8, 8], [0, 0]])
    flow = tf.constant(rng.normal(0.0, 1.0, (1, 32, 40, 2)), tf.float32)
    u = tf.constant([[0.3, -0.45]])
    jittered = model([vis, nir], flow=flow, jitter=tf.stack([u, tf.zeros_like(u)], axis=1))
    shifted_flow = model([vis, nir], flow=flow + u[:, None, None, :])
    np.testing.assert_allclose(jittered["fused"].numpy(), shifted_flow["fused"].numpy(), atol=1e-6)
    plain = model([vis, nir], flow=flow)
    for key in ("flow", "registered", "mask"):
        np.testing.assert_array_equal(jittered[key].numpy(), plain[key].numpy(), err_msg=key)
    assert np.abs(jittered["fused"].numpy() - plain["fused"].numpy()).max() > 1e-4

    v = tf.constant([[1.0, -2.0]])
    jittered = model([vis, nir], flow=flow, jitter=tf.stack([tf.zeros_like(v), v], axis=1))
    translated_nir = tf.pad(content, [[0, 0], [7, 9], [10, 6], [0, 0]])  # nir[p + v]
    np.testing.assert_allclose(
        jittered["fused"].numpy(), model([vis, translated_nir], flow=flow)["fused"].numpy(), atol=1e-6
    )


def test_first_three_convolutions_are_shared(f2m):
    """Both modalities go through the same variables (identity, not names)."""
    vis = tf.random.uniform((1, 24, 24, 1))
    nir = tf.random.uniform((1, 24, 24, 1))
    shared = [f2m.shared_conv1, f2m.shared_conv2, f2m.shared_conv3]
    variables = [v for layer in shared for v in layer.trainable_variables]
    assert len(variables) == 6
    with tf.GradientTape(persistent=True) as tape:
        deep_vis = f2m._shared_deep_features(f2m._shared_features(vis))
        deep_nir = f2m._shared_deep_features(f2m._shared_features(nir))
    for output in (deep_vis, deep_nir):
        assert all(g is not None for g in tape.gradient(output, variables))
    conv_kernels = [v for v in f2m.trainable_variables if v.name == "kernel" and len(v.shape) == 4]
    first_layer_kernels = [v for v in conv_kernels if v.shape[:3] == (3, 3, 1)]
    assert first_layer_kernels == [f2m.shared_conv1.kernel]


def test_variable_groups_are_disjoint_and_complete(f2m):
    fusion = {id(v) for v in f2m.fusion_variables}
    deformation = {id(v) for v in f2m.deformation_variables}
    assert fusion and deformation
    assert not fusion & deformation
    assert fusion | deformation == {id(v) for v in f2m.trainable_variables}
    assert deformation == {id(v) for v in f2m.deformation_block.trainable_variables}


def test_groups_survive_freezing_and_frozen_batch_norm_keeps_statistics():
    model = F2M()
    before = len(model.deformation_variables)
    model.deformation_block.trainable = False
    assert len(model.deformation_variables) == before
    statistics = [v for v in model.deformation_block.non_trainable_variables if "moving" in v.path]
    values = [v.numpy().copy() for v in statistics]
    model([tf.random.uniform((2, 32, 32, 1)), tf.random.uniform((2, 32, 32, 1))], training=True)
    for variable, value in zip(statistics, values):
        np.testing.assert_array_equal(variable.numpy(), value)
    model.deformation_block.trainable = True
    model([tf.random.uniform((2, 32, 32, 1)), tf.random.uniform((2, 32, 32, 1))], training=True)
    assert any(np.any(v.numpy() != value) for v, value in zip(statistics, values))


def test_deformation_block_reduces_a_known_local_shift():
    """Phase 1 (fusion) then phase 2 (deformation block alone, Eq. 9) on a pair with a
    smooth 1.5 px bump of misalignment: the flow's end-point error goes down."""
    size = 64
    noise = gaussian_filter(np.random.default_rng(0).standard_normal((size, size)), 1.5)
    texture = ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)
    nir = tf.constant(texture[None, ..., None])
    yy, xx = np.mgrid[0:size, 0:size]
    bump = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * 12.0**2))
    misalignment = np.stack([1.5 * bump, -1.5 * bump], axis=-1)[None].astype(np.float32)
    vis, _ = warp_flow(nir, misalignment)  # vis[p] = nir[p + f(p)]
    # For a small smooth field the registration flow is -f up to O(|f| |grad f|).
    true_flow = -misalignment

    def endpoint_error(flow):
        return np.linalg.norm(flow - true_flow, axis=-1)[0, 8:-8, 8:-8].mean()

    keras.utils.set_random_seed(0)
    model = F2M()
    fusion_optimizer = keras.optimizers.Adam(1e-3)
    deformation_optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def fusion_step():
        with tf.GradientTape() as tape:
            fused = model([vis, nir], training=True)["fused"]
            loss = fusion_loss(fused, vis, nir)["total"]
        variables = model.fusion_variables
        fusion_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    @tf.function
    def deformation_step():
        with tf.GradientTape() as tape:
            outputs = model([vis, nir], training=True)
            loss = deformation_loss(outputs["fused"], nir, outputs["flow"])["total"]
        variables = model.deformation_variables
        deformation_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    model.deformation_block.trainable = False
    for _ in range(60):
        fusion_step()
    model.deformation_block.trainable = True
    initial_error = endpoint_error(model([vis, nir])["flow"].numpy())
    for _ in range(40):
        deformation_step()
    final_error = endpoint_error(model([vis, nir])["flow"].numpy())
    assert initial_error > 0.7
    assert final_error < 0.8 * initial_error, (initial_error, final_error)
