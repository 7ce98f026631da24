"""RFNet: the composed pipeline's outputs, identity at initialisation, colour handling, F2M
alone."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import gaussian_filter, map_coordinates

from layers import warp_affine, warp_flow
from losses import ncc
from rfnet_tf.colour import luma, rgb_to_ycbcr
from rfnet_tf.data import read_dataset
from rfnet_tf.data.splits import select_pairs
from rfnet_tf.evaluation.sources import misalign
from rfnet_tf.networks.f2m import MIN_IMAGE_SIZE
from rfnet_tf.networks.refine import SIMILARITIES
from rfnet_tf.networks.rfnet import FINE_MIN_GAIN, RFNet, flow_gain, resize_for_affine
from rfnet_tf.training.validation import landmark_rmse
from rfnet_tf.weights import model_from_weights

REPO = Path(__file__).resolve().parents[3]
KEYS = {"registered_coarse", "registered", "fused", "fused_rgb", "affine", "flow", "mask",
        "coarse_ncc", "coarse_overlap", "coarse_unsure", "fine_gain", "fine_kept"}


@pytest.fixture(scope="module")
def model():
    """A new RFNet whose AffineNet predicts exactly the identity (head kernel zeroed; a new
    one starts within 1e-2 of it) and whose F2M flow is zero (zero-initialised head)."""
    network = RFNet(affine_input_size=64)
    kernel = network.affinenet.head.kernel
    kernel.assign(tf.zeros_like(kernel))
    return network


def test_the_package_loads_tensorflow_only_when_a_network_is_asked_for():
    """``rfnet_tf`` and its numpy parts (metrics, conventions) import without
    TensorFlow; ``rfnet_tf.RFNet`` loads the networks on first use."""
    code = (
        "import sys, rfnet_tf, rfnet_tf.metrics, rfnet_tf.conventions\n"
        "assert 'tensorflow' not in sys.modules, 'imported tensorflow'\n"
        "from rfnet_tf.networks import RFNet\n"
        "assert rfnet_tf.RFNet is RFNet\n"
        "try:\n"
        "    rfnet_tf.Nothing\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("batch,height,width", [(1, 50, 77), (3, 97, 131)])
def test_outputs_and_identity_at_initialisation(model, batch, height, width):
    vis = tf.random.uniform((batch, height, width, 3), seed=8)
    nir = tf.random.uniform((batch, height, width, 1), seed=9)
    out = model([vis, nir])
    assert set(out) == KEYS
    assert out["affine"].shape == (batch, 2, 3)
    assert out["flow"].shape == (batch, height, width, 2)
    for key in ("registered_coarse", "registered", "fused_rgb"):
        assert out[key].shape == (batch, height, width, 3)
    assert out["fused"].shape == out["mask"].shape == (batch, height, width, 1)
    # A new model registers with the identity: the input comes back up to round-off.
    np.testing.assert_allclose(out["registered"].numpy(), vis.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["registered_coarse"].numpy(), vis.numpy(), atol=1e-4)
    np.testing.assert_array_equal(out["mask"].numpy(), 1.0)
    # The confidence of the identity: the NCC of the translated VIS with the NIR over
    # the whole image (its overlap is 1), measured on the coarse input.
    assert out["coarse_ncc"].shape == out["coarse_overlap"].shape == (batch,)
    np.testing.assert_array_equal(out["coarse_overlap"].numpy(), 1.0)
    small_vis = resize_for_affine(luma(vis), model.affine_input_size)
    small_nir = resize_for_affine(nir, model.affine_input_size)
    expected = ncc(model.transnet.translate_vis(small_vis), small_nir)
    np.testing.assert_allclose(out["coarse_ncc"].numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(
        out["coarse_unsure"].numpy(), out["coarse_ncc"].numpy() < SIMILARITIES["ncc"].low_confidence
    )


def test_fused_rgb_carries_fused_luma_and_registered_chroma(model):
    vis = tf.random.uniform((1, 40, 48, 3), minval=0.3, maxval=0.7, seed=10)
    nir = tf.random.uniform((1, 40, 48, 1), seed=11)
    out = model([vis, nir])
    ycbcr = rgb_to_ycbcr(out["fused_rgb"]).numpy()
    reference = rgb_to_ycbcr(out["registered"]).numpy()
    unclipped = np.all((out["fused_rgb"].numpy() > 0) & (out["fused_rgb"].numpy() < 1), axis=-1)
    np.testing.assert_allclose(ycbcr[..., 0][unclipped], out["fused"].numpy()[..., 0][unclipped], atol=1e-5)
    np.testing.assert_allclose(ycbcr[..., 1:][unclipped], reference[..., 1:][unclipped], atol=1e-5)


def test_grey_visible_image(model):
    out = model([tf.random.uniform((1, 40, 48, 1)), tf.random.uniform((1, 40, 48, 1))])
    assert out["registered"].shape == (1, 40, 48, 1)
    rgb = out["fused_rgb"].numpy()
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_registered_samples_the_composed_transform():
    """With a non-identity affine and a constant flow, registered = vis at A(p + flow)."""
    network = RFNet(affine_input_size=64)
    head = network.affinenet.head
    head.bias.assign([0.0, 0.0, 0.1, 0.0, 0.0, -0.05])
    flow_head = network.f2m.deformation_block.head
    flow_head.bias.assign([0.05, -0.05])
    shift = 16.0 * np.tanh(0.05)
    y, x = np.mgrid[0:40, 0:48].astype(np.float32)
    ramp = np.stack([y / 39.0, x / 47.0, (x + y) / 87.0], axis=-1)[None]
    out = network([tf.constant(ramp), tf.random.uniform((1, 40, 48, 1))])
    flow = out["flow"].numpy()
    np.testing.assert_allclose(flow[..., 0], shift, atol=1e-5)
    np.testing.assert_allclose(flow[..., 1], -shift, atol=1e-5)
    # Sampling once at A(p + flow) equals warping by A, then by the flow (scipy), for a
    # linear image, wherever both stay inside the image.
    coarse, _ = warp_affine(tf.constant(ramp), out["affine"])
    yy = np.clip(y + shift, 0, 39)
    xx = np.clip(x - shift, 0, 47)
    registered = out["registered"].numpy()[0]
    interior = out["mask"].numpy()[0, ..., 0] > 0
    interior[:3] = interior[-3:] = False
    interior[:, :3] = interior[:, -3:] = False
    coarse_np = coarse.numpy()[0]
    resampled = np.stack(
        [map_coordinates(coarse_np[..., c], [yy, xx], order=1) for c in range(3)], axis=-1
    )
    np.testing.assert_allclose(registered[interior], resampled[interior], atol=1e-4)


def test_affinenet_input_size_gives_affinenet_its_own_copy():
    """AffineNet (matching head, untrained) sees TransNet's translation of a 96 px copy
    while the coarse input stays 64 px; None keeps it on the coarse input."""
    rng = np.random.default_rng(3)
    vis = tf.constant(rng.uniform(size=(1, 50, 70, 3)).astype(np.float32))
    nir = tf.constant(rng.uniform(size=(1, 50, 70, 1)).astype(np.float32))
    same = RFNet(affine_input_size=64, affine_head="matching", correlation_radius=3)
    larger = RFNet(affine_input_size=64, affine_head="matching", correlation_radius=3,
                   affinenet_input_size=96)
    larger.set_weights(same.get_weights())

    def affinenet_alone(size):
        small_vis = resize_for_affine(luma(vis), size)
        translated = same.transnet.translate_vis(small_vis)
        return same.affinenet(tf.concat([translated, resize_for_affine(nir, size)], axis=-1))

    np.testing.assert_allclose(same.predict_affine(vis, nir).numpy(), affinenet_alone(64).numpy(), atol=1e-6)
    np.testing.assert_allclose(larger.predict_affine(vis, nir).numpy(), affinenet_alone(96).numpy(), atol=1e-6)
    assert np.abs(affinenet_alone(96).numpy() - affinenet_alone(64).numpy()).max() > 1e-4
    with pytest.raises(ValueError, match="affinenet_input_size"):
        RFNet(affinenet_input_size=4)


def test_the_shipped_affinenet_registers_unseen_pairs_in_one_pass(shared_dir):
    """The paper's single pass (no search): on two validation pairs no training run saw,
    under seed 0's synthetic affine (198 and 95 px unaligned), the shipped AffineNet's affine
    moves the landmarks to within 5 px of the truth (4.3 and 2.5 px when measured; the
    pooled head shipped before session 23 left them at 167 and 90 px)."""
    dataset = read_dataset(shared_dir / "data" / "rgbnir_country")
    model = model_from_weights(REPO / "weights", overrides={"coarse_refinement_steps": 0})
    for pair in select_pairs(dataset, only=["country/0009", "country/0044"]):
        sample = misalign(pair, "affine", seed=0, num_landmarks=5)
        out = model.coarse(tf.constant(sample.pair.vis[None]), tf.constant(sample.pair.nir[None]))
        unaligned = landmark_rmse(sample)
        assert unaligned > 50.0, pair.name
        assert landmark_rmse(sample, theta=out["affine"].numpy()[0]) < 5.0, pair.name


def test_fine_is_f2m_alone_on_the_pair_as_given():
    """With a non-identity affine and a flow of exactly (2, -2) px: fine() ignores the
    affine, registers every VIS channel by the flow alone (integer shift = slicing)."""
    network = RFNet(affine_input_size=64)
    network.affinenet.head.bias.assign([0.0, 0.0, 0.1, 0.0, 0.0, -0.05])
    network.f2m.deformation_block.head.bias.assign(np.arctanh([2.0 / 16.0, -2.0 / 16.0]))
    vis = tf.random.uniform((2, 40, 48, 3), seed=15)
    nir = tf.random.uniform((2, 40, 48, 1), seed=16)
    out = network.fine(vis, nir)
    assert set(out) == {"registered", "fused", "fused_rgb", "flow", "mask", "fine_gain", "fine_kept"}
    assert out["fine_kept"].numpy().all()  # unguarded: the paper's F2M
    alone = network.f2m([luma(vis), nir])
    np.testing.assert_allclose(out["flow"].numpy(), alone["flow"].numpy(), atol=1e-6)
    np.testing.assert_allclose(out["fused"].numpy(), alone["fused"].numpy(), atol=1e-6)
    np.testing.assert_allclose(out["flow"].numpy(), np.broadcast_to([2.0, -2.0], (2, 40, 48, 2)), atol=1e-5)
    registered = out["registered"].numpy()
    np.testing.assert_allclose(registered[:, :-2, 2:], vis.numpy()[:, 2:, :-2], atol=1e-4)
    # Zero outside: the last two rows and the first two columns sample beyond the image.
    inside = np.zeros((2, 40, 48, 1), np.float32)
    inside[:, :-2, 2:] = 1.0
    np.testing.assert_array_equal(out["mask"].numpy(), inside)
    np.testing.assert_array_equal(registered[:, -1], 0.0)
    # The whole model registers by the affine first: another image.
    assert np.abs(network([vis, nir])["registered"].numpy() - registered).max() > 0.1
    ycbcr = rgb_to_ycbcr(out["fused_rgb"]).numpy()
    unclipped = np.all((out["fused_rgb"].numpy() > 0) & (out["fused_rgb"].numpy() < 1), axis=-1)
    np.testing.assert_allclose(ycbcr[..., 0][unclipped], out["fused"].numpy()[..., 0][unclipped], atol=1e-5)
    reference = rgb_to_ycbcr(out["registered"]).numpy()
    np.testing.assert_allclose(ycbcr[..., 1:][unclipped], reference[..., 1:][unclipped], atol=1e-5)


def _textured_pair(shift: tuple[int, int]):
    """``(vis (1, 48, 64, 3), nir (1, 48, 64, 1))`` of one smooth random texture, the VIS
    content moved so that ``vis[p + shift] = nir[p]`` (wrapped at the border)."""
    texture = gaussian_filter(np.random.default_rng(8).standard_normal((48, 64)), 2.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    moved = np.roll(texture, shift, axis=(0, 1))
    vis = np.repeat(moved[None, ..., None], 3, axis=-1).astype(np.float32)
    return tf.constant(vis), tf.constant(texture[None, ..., None].astype(np.float32))


def test_the_fine_guard_applies_only_a_flow_that_raises_the_gradient_ncc():
    """F2M's flow is exactly (2, -2) px. Where the VIS is the NIR moved by that much, the
    flow registers it (the gradient NCC rises to 1 inside), and the guarded model applies
    it as the unguarded one does. On an aligned pair the same flow misaligns: the guard
    refuses it, so the flow is zero, the VIS is returned as it is and F2M fuses the pair
    unmoved; unguarded (the paper's F2M), the flow is applied."""
    guarded = RFNet(affine_input_size=64, fine_min_gain=FINE_MIN_GAIN)
    unguarded = RFNet(affine_input_size=64)
    guarded.f2m.deformation_block.head.bias.assign(np.arctanh([2.0 / 16.0, -2.0 / 16.0]))
    unguarded.set_weights(guarded.get_weights())
    moved_vis, nir = _textured_pair((2, -2))
    shifted = guarded.fine(moved_vis, nir)
    assert shifted["fine_kept"].numpy().all() and shifted["fine_gain"].numpy()[0] > 0.5
    reference = unguarded.fine(moved_vis, nir)
    for key in ("flow", "registered", "fused"):
        np.testing.assert_allclose(shifted[key].numpy(), reference[key].numpy(), atol=1e-5)
    np.testing.assert_allclose(shifted["fine_gain"].numpy(), reference["fine_gain"].numpy(), atol=1e-6)

    aligned_vis, nir = _textured_pair((0, 0))
    refused = guarded.fine(aligned_vis, nir)
    assert not refused["fine_kept"].numpy().any() and refused["fine_gain"].numpy()[0] < 0
    np.testing.assert_array_equal(refused["flow"].numpy(), 0.0)
    np.testing.assert_allclose(refused["registered"].numpy(), aligned_vis.numpy(), atol=1e-6)
    unmoved = guarded.f2m([luma(aligned_vis), nir], flow=tf.zeros((1, 48, 64, 2)))
    np.testing.assert_allclose(refused["fused"].numpy(), unmoved["fused"].numpy(), atol=1e-6)
    applied = unguarded.fine(aligned_vis, nir)
    assert applied["fine_kept"].numpy().all()
    np.testing.assert_allclose(applied["flow"].numpy(), np.broadcast_to([2.0, -2.0], (1, 48, 64, 2)), atol=1e-5)
    # The whole model (identity affine: AffineNet's head zeroed) guards the same way.
    guarded.affinenet.head.kernel.assign(tf.zeros_like(guarded.affinenet.head.kernel))
    whole = guarded([aligned_vis, nir])
    assert not whole["fine_kept"].numpy().any()
    np.testing.assert_allclose(whole["registered"].numpy(), whole["registered_coarse"].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="fine_min_gain"):
        RFNet(fine_min_gain=3.0)


def test_the_shipped_fine_guard_refuses_the_shipped_flow_and_passes_a_true_field(shared_dir):
    """On validation pair 0009 (full size): aligned, the shipped F2M's flow (a half-pixel
    shift, weights/README.md F2M item 3) lowers the gradient NCC, so the shipped guard
    refuses it and the pair stays exactly aligned; under seed 0's local misalignment the
    true field raises the gradient NCC far beyond the margin (0.19 measured) while the
    shipped flow does not."""
    dataset = read_dataset(shared_dir / "data" / "rgbnir_country")
    model = model_from_weights(REPO / "weights")
    assert model.fine_min_gain == FINE_MIN_GAIN
    (pair,) = select_pairs(dataset, only=["country/0009"])
    vis, nir = tf.constant(pair.vis[None]), tf.constant(pair.nir[None])
    aligned = model.fine(vis, nir)
    assert not aligned["fine_kept"].numpy()[0]
    np.testing.assert_array_equal(aligned["flow"].numpy(), 0.0)
    sample = misalign(pair, "local", seed=0, num_landmarks=5)
    moving = luma(tf.constant(sample.pair.vis[None]))
    nir = tf.constant(sample.pair.nir[None])
    coordinates = sample.truth.registration_coordinates()
    grid = np.stack(np.meshgrid(*map(np.arange, coordinates.shape[:2]), indexing="ij"), axis=-1)
    true_flow = tf.constant((coordinates - grid)[None], tf.float32)
    registered, inside = warp_flow(moving, true_flow)
    ones = tf.ones_like(moving)
    assert flow_gain(moving, registered, nir, ones, inside).numpy()[0] > 3 * FINE_MIN_GAIN
    local = model.fine(tf.constant(sample.pair.vis[None]), nir)
    assert local["fine_gain"].numpy()[0] < FINE_MIN_GAIN


def test_min_image_size_is_the_smallest_side_f2m_accepts(model):
    side = MIN_IMAGE_SIZE
    out = model.f2m([tf.random.uniform((1, side, side + 3, 1)), tf.random.uniform((1, side, side + 3, 1))])
    assert out["fused"].shape == (1, side, side + 3, 1)
    with pytest.raises(tf.errors.InvalidArgumentError):  # F2M's reflect padding, unchecked
        model.f2m([tf.random.uniform((1, side - 1, 16, 1)), tf.random.uniform((1, side - 1, 16, 1))])


@pytest.mark.parametrize(
    "vis_shape,nir_shape",
    [((1, 4, 4, 3), (1, 4, 4, 1)), ((1, 20, 24, 3), (1, 20, 22, 1)), ((2, 20, 24, 3), (1, 20, 24, 1))],
)
def test_small_or_mismatched_inputs_are_refused_naming_both_shapes(model, vis_shape, nir_shape):
    expected = (
        rf"at least {MIN_IMAGE_SIZE} px; got vis shape \[{' '.join(map(str, vis_shape))}\] "
        rf"and nir shape \[{' '.join(map(str, nir_shape))}\]"
    )
    vis, nir = tf.zeros(vis_shape), tf.zeros(nir_shape)
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        model([vis, nir])
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        model.coarse(vis, nir)
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        model.fine(vis, nir)


def test_none_dimensions_in_tf_function(model):
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32),
            tf.TensorSpec([None, None, None, 1], tf.float32),
        ]
    )
    def run(vis, nir):
        return model([vis, nir])

    # One trace serves every size, and gives the eager model's outputs.
    for shape in [(1, 50, 77), (2, 64, 40)]:
        vis, nir = tf.random.uniform(shape + (3,), seed=1), tf.random.uniform(shape + (1,), seed=2)
        out, eager = run(vis, nir), model([vis, nir])
        for key in ("affine", "flow", "fused"):
            np.testing.assert_allclose(out[key].numpy(), eager[key].numpy(), atol=1e-4, err_msg=key)
    assert run.experimental_get_tracing_count() == 1


def test_coarse_registration_under_mixed_bfloat16(model):
    """Built under ``mixed_bfloat16`` (``--mixed_precision`` on a CPU, whose validation
    calls this), the coarse registration runs, search included, with float32 outputs,
    and AffineNet's single pass equals the float32 network's to bfloat16 precision."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = RFNet(affine_input_size=64, coarse_refinement_steps=2)
    finally:
        keras.config.set_dtype_policy(previous)
    for part in ("transnet", "affinenet"):
        getattr(mixed, part).set_weights(getattr(model, part).get_weights())
    mixed.affinenet.head.bias.assign([0.02, -0.01, 0.03, 0.01, 0.02, -0.02])
    vis = tf.random.uniform((1, 70, 90, 3), seed=11)
    nir = tf.random.uniform((1, 70, 90, 1), seed=12)
    registration = mixed.register_coarse(vis, nir)
    assert registration["affine"].dtype == tf.float32
    assert bool(tf.reduce_all(tf.math.is_finite(registration["affine"])))

    def single_pass(network):
        translated = network.transnet.translate_vis(resize_for_affine(luma(vis), 64))
        assert translated.dtype == tf.float32
        return network.affinenet(tf.concat([translated, resize_for_affine(nir, 64)], axis=-1))

    model.affinenet.head.bias.assign(mixed.affinenet.head.bias)
    try:
        expected = single_pass(model)
    finally:
        model.affinenet.head.bias.assign(tf.zeros([6]))
    np.testing.assert_allclose(single_pass(mixed).numpy(), expected.numpy(), atol=2e-3)


@pytest.mark.parametrize("affine_head", ["pooled", "matching"])
def test_checkpoint_holds_every_variable(tmp_path, affine_head):
    """tf.train.Checkpoint must reach every variable (layers kept in Python lists of a
    Keras 3 layer would be silently left out, and a resumed run would reset them; so
    would the matching head's sharpness, a weight of the model itself)."""
    network = RFNet(affine_input_size=64, affine_head=affine_head)
    path = tf.train.Checkpoint(model=network).save(str(tmp_path / "ckpt"))
    stored = {name for name, _ in tf.train.list_variables(path) if name.startswith("model/")}
    assert len(stored) == len(network.weights)
