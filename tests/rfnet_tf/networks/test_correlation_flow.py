"""The correlation deformation block: its cost volume against brute force and the
every-pair version, its edge maps and descriptors, exact whole-cell shifts, zero flow at the start, its
bound and config, and that it learns a shift across a change of contrast."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import gaussian_filter

from layers import warp_flow
from rfnet_tf.networks.correlation_flow import (
    STRIDE,
    CorrelationBlock,
    edge_map,
    shifted_correlation,
    unit_descriptors,
)
from rfnet_tf.networks.f2m import F2M
from rfnet_tf.networks.matching import displacement_offsets, local_correlation


def brute_force_correlation(fixed, moving, radius):
    batch, height, width, _ = fixed.shape
    offsets = displacement_offsets(radius).astype(int)
    out = np.zeros((batch, height, width, len(offsets)))
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for k, (dy, dx) in enumerate(offsets):
                    if 0 <= y + dy < height and 0 <= x + dx < width:
                        out[b, y, x, k] = np.mean(fixed[b, y, x] * moving[b, y + dy, x + dx])
    return out


@pytest.mark.parametrize("radius", [1, 3])
def test_shifted_correlation_is_the_brute_force_and_the_every_pair_correlation(rng, radius):
    fixed = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    moving = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    result = shifted_correlation(tf.constant(fixed), tf.constant(moving), radius).numpy()
    np.testing.assert_allclose(result, brute_force_correlation(fixed, moving, radius), atol=1e-5)
    every_pair = local_correlation(tf.constant(fixed), tf.constant(moving), radius).numpy()
    np.testing.assert_allclose(result, every_pair, atol=1e-5)


def test_unit_descriptors_have_zero_channel_mean_and_unit_length(rng):
    features = rng.normal(2.0, 3.0, size=(2, 4, 5, 6)).astype(np.float32)
    unit = unit_descriptors(tf.constant(features)).numpy()
    centred = features - features.mean(axis=-1, keepdims=True)
    expected = centred / np.linalg.norm(centred, axis=-1, keepdims=True)
    np.testing.assert_allclose(unit, expected, atol=1e-5)
    # A flat cell (all channels equal) has no direction: zero, not NaN.
    flat = unit_descriptors(tf.ones((1, 2, 2, 6))).numpy()
    np.testing.assert_array_equal(flat, 0.0)


def test_edge_map_is_the_gradient_magnitude_over_its_mean_whatever_the_contrast(rng):
    # Steep enough that the magnitude's 1e-8 (differentiable on flat regions) is negligible.
    image = 10.0 * gaussian_filter(rng.standard_normal((2, 20, 24, 1)), (0, 1.5, 1.5, 0))
    image = image.astype(np.float32)
    edges = edge_map(tf.constant(image)).numpy()
    np.testing.assert_allclose(edges.mean(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    # Inside the border, proportional to numpy's central-difference gradient magnitude.
    d_y, d_x = np.gradient(image, axis=(1, 2))
    magnitude = np.hypot(d_y, d_x)[:, 1:-1, 1:-1]
    scale = np.median(edges[:, 1:-1, 1:-1] / magnitude, axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(edges[:, 1:-1, 1:-1], scale * magnitude, rtol=1e-4, atol=1e-4)
    # An affine change of intensity, even one that inverts the contrast, leaves it alone.
    for scale, offset in ((3.0, 0.2), (-0.5, 1.0)):
        changed = edge_map(tf.constant(scale * image + offset)).numpy()
        np.testing.assert_allclose(changed, edges, rtol=1e-3, atol=1e-4)


def test_the_block_flow_ignores_each_image_contrast(rng):
    block = CorrelationBlock(filters=8, radius=2)
    vis, nir = smooth_texture(1, 32), smooth_texture(2, 32)
    block(tf.concat([vis, nir], axis=-1))
    block.match_weight.assign(1.0)
    block.head.kernel.assign(tf.random.normal(block.head.kernel.shape, stddev=0.1, seed=4))
    flow = block(tf.concat([vis, nir], axis=-1)).numpy()
    assert np.abs(flow).max() > 0.1
    changed = block(tf.concat([1.0 - 0.5 * vis, 4.0 * nir + 2.0], axis=-1)).numpy()
    np.testing.assert_allclose(changed, flow, atol=1e-3)


def sharp_block(**kwargs) -> CorrelationBlock:
    """A new block whose flow is its matches, by a soft-argmax that is (nearly) an argmax."""
    block = CorrelationBlock(**kwargs)
    block(tf.zeros((1, 8, 8, 2)))
    block.log_sharpness.assign(np.log(1e3))
    block.match_weight.assign(1.0)
    return block


def smooth_texture(seed: int, size: int = 64) -> tf.Tensor:
    noise = gaussian_filter(np.random.default_rng(seed).standard_normal((size, size)), 1.5)
    return tf.constant(noise[None, ..., None], tf.float32)


@pytest.mark.parametrize("shift", [(8, -4), (0, 12), (-4, -4)])
def test_a_new_block_finds_a_whole_cell_shift_exactly(shift):
    """Convolutions commute with shifts by a multiple of their stride, so a block's
    descriptors of ``moving[q] = fixed[q - s]`` are the fixed ones moved by ``s / STRIDE``
    cells: away from the border the best match is exact, and with the matches' full
    share the flow is ``s`` (the head, zero-initialised, adds nothing)."""
    fixed = smooth_texture(0)
    moving = tf.roll(fixed, shift=shift, axis=[1, 2])
    block = sharp_block(max_displacement=5.0, filters=16, radius=3)
    flow = block(tf.concat([moving, fixed], axis=-1)).numpy()[0, 24:40, 24:40]
    np.testing.assert_allclose(flow[..., 0], shift[0], atol=1e-3)
    np.testing.assert_allclose(flow[..., 1], shift[1], atol=1e-3)


@pytest.mark.parametrize("height,width", [(16, 24), (40, 8)])
def test_zero_flow_at_initialisation_for_any_multiple_of_the_stride(height, width):
    block = CorrelationBlock(max_displacement=5.0, filters=8, radius=2)
    flow = block(tf.random.uniform((2, height, width, 2)))
    assert flow.shape == (2, height, width, 2)
    np.testing.assert_array_equal(flow.numpy(), 0.0)


@pytest.mark.parametrize("height,width", [(16, 24), (40, 8)])
def test_zero_flow_for_an_image_against_itself(height, width):
    """A cell matches itself best (cosine 1); the sharp soft-argmax is then 0 (to a
    hundredth of a pixel where a neighbour's descriptor is nearly the same)."""
    image = tf.random.uniform((2, height, width, 1), seed=4)
    flow = sharp_block(max_displacement=5.0, filters=8, radius=2)(tf.concat([image, image], axis=-1))
    assert flow.shape == (2, height, width, 2)
    np.testing.assert_allclose(flow.numpy(), 0.0, atol=1e-2)


def test_a_constant_head_adds_a_constant_bounded_correction():
    """With a zero kernel and bias ``b`` the head adds ``max_displacement * tanh(b)`` in
    every cell; bilinear upsampling keeps a constant field constant."""
    block = sharp_block(max_displacement=3.0, filters=8, radius=1)
    block.head.bias.assign(np.array([0.4, -20.0], np.float32))
    image = tf.random.uniform((1, 12, 20, 1), seed=5)
    flow = block(tf.concat([image, image], axis=-1)).numpy()
    np.testing.assert_allclose(flow[..., 0], 3.0 * np.tanh(0.4), atol=1e-3)
    np.testing.assert_allclose(flow[..., 1], -3.0, atol=1e-3)


def test_from_config_round_trip_gives_the_same_flow(rng):
    block = CorrelationBlock(max_displacement=7.0, filters=8, radius=2)
    inputs = tf.random.uniform((1, 16, 16, 2), seed=3)
    block(inputs)
    for variable in block.weights:
        variable.assign(rng.normal(0.0, 0.3, variable.shape))
    config = block.get_config()
    assert {key: config[key] for key in CorrelationBlock.CONFIG_ARGUMENTS} == {
        "max_displacement": 7.0, "filters": 8, "radius": 2,
    }
    restored = CorrelationBlock.from_config(config)
    restored(inputs)
    restored.set_weights(block.get_weights())
    np.testing.assert_array_equal(restored(inputs).numpy(), block(inputs).numpy())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="radius and filters"):
        CorrelationBlock(radius=0)
    with pytest.raises(ValueError, match="deformation_block_type must be one of"):
        F2M(deformation_block_type="transformer")


def test_f2m_with_the_correlation_block_round_trips_and_starts_at_zero_flow():
    model = F2M(deformation_block_type="correlation")
    assert isinstance(model.deformation_block, CorrelationBlock)
    images = [tf.random.uniform((1, 37, 45, 1), seed=s) for s in (1, 2)]
    np.testing.assert_array_equal(model(images)["flow"].numpy(), 0.0)
    for variable in model.deformation_block.weights:
        variable.assign(variable + 0.1)
    restored = F2M.from_config(model.get_config())
    assert restored.deformation_block_type == "correlation"
    restored.set_weights(model.get_weights())
    np.testing.assert_array_equal(restored(images)["flow"].numpy(), model(images)["flow"].numpy())
    # The groups split the same way as with the paper's block.
    block_ids = {id(v) for v in model.deformation_block.trainable_weights}
    assert {id(v) for v in model.deformation_variables} == block_ids
    assert not block_ids & {id(v) for v in model.fusion_variables}


def test_f2m_reads_the_images_into_the_correlation_block_and_predict_flow_is_its_flow(rng):
    """The block sees ``concat(vis_luma, nir)`` (padded to a multiple of 8 and cropped
    back): F2M's flow is the block's on the images, and :meth:`F2M.predict_flow` the
    call's own."""
    model = F2M(deformation_block_type="correlation")
    for variable in model.deformation_block.weights:
        variable.assign(rng.normal(0.0, 0.2, variable.shape) + variable.numpy())
    vis = tf.random.uniform((2, 32, 40, 1), seed=8)
    nir = tf.random.uniform((2, 32, 40, 1), seed=9)
    flow = model([vis, nir])["flow"].numpy()
    assert np.abs(flow).max() > 0.1
    np.testing.assert_allclose(
        flow, model.deformation_block(tf.concat([vis, nir], axis=-1)).numpy(), atol=1e-5
    )
    np.testing.assert_allclose(model.predict_flow([vis, nir]).numpy(), flow, atol=1e-5)


def test_it_learns_a_shift_across_an_inverted_contrast():
    """Supervised on fresh textures shifted by a random constant of up to 6 px, the fixed
    image the moving one's contrast inverse (a new block's best matches are wrong): the
    end-point error on held-out textures falls well below zero flow's."""
    size, bound = 48, 6.0
    generator = np.random.default_rng(0)

    def batch(count):
        noise = gaussian_filter(generator.standard_normal((count, size, size)), (0, 1.5, 1.5))
        texture = (noise - noise.min()) / (noise.max() - noise.min())
        fixed = tf.constant(texture[..., None], tf.float32)
        shift = generator.uniform(-bound, bound, (count, 1, 1, 2)).astype(np.float32)
        flow = tf.constant(np.broadcast_to(shift, (count, size, size, 2)))
        # registered[p] = moving[p + flow(p)] is the fixed image: moving[q] = fixed[q - flow].
        moving, _ = warp_flow(1.0 - fixed, -flow, padding_mode="border")
        return tf.concat([moving, fixed], axis=-1), flow

    keras.utils.set_random_seed(0)
    block = CorrelationBlock(max_displacement=8.0, filters=16, radius=3)
    # Two 1-channel "features" stand in for F2M's 16 per image.
    optimizer = keras.optimizers.Adam(2e-3)
    inner = (slice(None), slice(STRIDE * 2, -STRIDE * 2), slice(STRIDE * 2, -STRIDE * 2))

    @tf.function
    def step(images, flow):
        with tf.GradientTape() as tape:
            error = tf.reduce_mean(tf.norm(block(images) - flow, axis=-1)[inner])
        optimizer.apply_gradients(zip(tape.gradient(error, block.trainable_weights), block.trainable_weights))

    held_out, truth = batch(8)
    zero_error = float(tf.reduce_mean(tf.norm(truth, axis=-1)))
    for _ in range(300):
        step(*batch(8))
    error = float(tf.reduce_mean(tf.norm(block(held_out) - truth, axis=-1)[inner]))
    assert error < 0.5 * zero_error, (error, zero_error)
