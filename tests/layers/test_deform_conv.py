"""deform_conv2d and DeformableConv2D: torchvision reference data, a brute-force numpy
deformable convolution, and the zero-offset layer against a plain Keras convolution.

Reference file format (``deform_conv_reference``): ``num_cases`` and, for case ``i``,
``case{i}_x (B, H, W, Cin)``, ``case{i}_offset (B, Ho, Wo, 2*kh*kw)`` (pairs (dy, dx) per
tap, taps row-major), ``case{i}_kernel (kh, kw, Cin, Cout)``, ``case{i}_bias (Cout,)``,
``case{i}_y (B, Ho, Wo, Cout)``, ``case{i}_r`` (like y) and the gradients ``case{i}_dx``,
``_doffset``, ``_dkernel``, ``_dbias`` of ``sum(y * r)``; scalars ``case{i}_stride``,
``_padding`` (symmetric zeros), ``_dilation``. Case 0 has zero offsets.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import layers.deform_conv as deform_conv_module
from layers import DeformableConv2D, deform_conv2d

REFERENCE_FILE = (
    Path(__file__).resolve().parents[3] / "shared" / "reference" / "deform_conv2d_torchvision.npz"
)
REFERENCE_ATOL = 1e-4


def pytest_generate_tests(metafunc):
    """One test per case of the torchvision reference file (one case that the
    ``deform_conv_reference`` fixture skips when the file is absent)."""
    if "reference_case" in metafunc.fixturenames:
        num_cases = 1
        if REFERENCE_FILE.exists():
            with np.load(REFERENCE_FILE) as data:
                num_cases = int(data["num_cases"])
        metafunc.parametrize("reference_case", range(num_cases))


def bilinear_zero_padded(image: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear value of ``image (H, W, C)`` at ``(y, x)``; corners outside read 0."""
    height, width, channels = image.shape
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    value = np.zeros(channels)
    for cy, wy in ((y0, 1.0 - (y - y0)), (y0 + 1, y - y0)):
        for cx, wx in ((x0, 1.0 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= cy < height and 0 <= cx < width:
                value += wy * wx * image[cy, cx]
    return value


def brute_force_deform_conv(x, offset, kernel, bias, strides, padding, dilation, mask=None):
    """Loops straight from the definition (ARCHITECTURE section 2); float64.

    Returns ``(y, samples)`` with ``samples (B, Ho, Wo, kh, kw, Cin)`` the bilinear
    samples before modulation.
    """
    batch, height, width, cin = x.shape
    kh, kw, _, cout = kernel.shape
    (sh, sw), (ph, pw), (dh, dw) = strides, padding, dilation
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    samples = np.zeros((batch, out_h, out_w, kh, kw, cin))
    y = np.zeros((batch, out_h, out_w, cout))
    for b in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                total = bias.astype(np.float64).copy()
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        dy, dx = offset[b, oy, ox, 2 * k], offset[b, oy, ox, 2 * k + 1]
                        sample = bilinear_zero_padded(
                            x[b], oy * sh - ph + i * dh + dy, ox * sw - pw + j * dw + dx
                        )
                        samples[b, oy, ox, i, j] = sample
                        modulation = 1.0 if mask is None else mask[b, oy, ox, k]
                        total += modulation * sample @ kernel[i, j]
                y[b, oy, ox] = total
    return y, samples


def _random_case(rng, batch, height, width, cin, cout, kernel_size, strides, padding, dilation,
                 offset_scale):
    kh, kw = kernel_size
    out_h = (height + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    f32 = lambda a: a.astype(np.float32)
    return dict(
        x=f32(rng.normal(size=(batch, height, width, cin))),
        offset=f32(rng.normal(0.0, offset_scale, size=(batch, out_h, out_w, 2 * kh * kw))),
        kernel=f32(rng.normal(size=(kh, kw, cin, cout))),
        bias=f32(rng.normal(size=(cout,))),
        mask=f32(rng.uniform(0.0, 2.0, size=(batch, out_h, out_w, kh * kw))),
    )


def test_matches_torchvision_reference(deform_conv_reference, reference_case):
    with np.load(deform_conv_reference) as data:
        assert reference_case < int(data["num_cases"])
        case = {k[len(f"case{reference_case}_"):]: data[k] for k in data.files
                if k.startswith(f"case{reference_case}_")}
    inputs = [tf.constant(case[name]) for name in ("x", "offset", "kernel", "bias")]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = deform_conv2d(
            *inputs,
            strides=int(case["stride"]),
            padding=int(case["padding"]),
            dilation=int(case["dilation"]),
        )
        loss = tf.reduce_sum(y * case["r"])
    grads = tape.gradient(loss, inputs)

    np.testing.assert_allclose(y.numpy(), case["y"], atol=REFERENCE_ATOL, rtol=0)
    for name, grad in zip(("dx", "doffset", "dkernel", "dbias"), grads):
        assert grad.shape == case[name].shape, name
        np.testing.assert_allclose(grad.numpy(), case[name], atol=REFERENCE_ATOL, rtol=0,
                                   err_msg=name)


@pytest.mark.parametrize(
    "kernel_size, strides, padding, dilation, offset_scale",
    [
        ((3, 3), (1, 1), (1, 1), (1, 1), 1.5),
        ((3, 3), (2, 2), (0, 0), (1, 1), 3.0),
        ((2, 3), (1, 2), (0, 1), (2, 1), 2.0),
        ((3, 2), (2, 1), (2, 0), (1, 2), 4.0),
    ],
)
def test_forward_matches_brute_force(rng, kernel_size, strides, padding, dilation, offset_scale):
    case = _random_case(rng, 2, 6, 7, 2, 3, kernel_size, strides, padding, dilation, offset_scale)
    expected, _ = brute_force_deform_conv(
        case["x"], case["offset"], case["kernel"], case["bias"], strides, padding, dilation
    )
    actual = deform_conv2d(
        case["x"], case["offset"], case["kernel"], case["bias"],
        strides=strides, padding=padding, dilation=dilation,
    )
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-4, rtol=0)


def test_modulated_forward_and_mask_gradient_match_brute_force(rng):
    strides, padding, dilation = (1, 2), (1, 0), (1, 1)
    case = _random_case(rng, 1, 5, 6, 2, 3, (3, 3), strides, padding, dilation, 1.5)
    expected, samples = brute_force_deform_conv(
        case["x"], case["offset"], case["kernel"], case["bias"], strides, padding, dilation,
        mask=case["mask"],
    )
    r = rng.normal(size=expected.shape).astype(np.float32)
    # d sum(y * r) / d mask[b, oy, ox, k] = sum_{c, o} samples[..., i, j, c] kernel[i, j, c, o] r[..., o]
    expected_dmask = np.einsum("byxijc,ijco,byxo->byxij", samples, case["kernel"], r)
    expected_dmask = expected_dmask.reshape(case["mask"].shape)

    mask = tf.constant(case["mask"])
    with tf.GradientTape() as tape:
        tape.watch(mask)
        actual = deform_conv2d(
            case["x"], case["offset"], case["kernel"], case["bias"],
            strides=strides, padding=padding, dilation=dilation, mask=mask,
        )
        loss = tf.reduce_sum(actual * r)
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(tape.gradient(loss, mask).numpy(), expected_dmask, atol=1e-4, rtol=0)


def test_without_bias_and_float64(rng):
    case = _random_case(rng, 1, 5, 5, 2, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1.0)
    as64 = {k: v.astype(np.float64) for k, v in case.items()}
    expected, _ = brute_force_deform_conv(
        as64["x"], as64["offset"], as64["kernel"], np.zeros(2), (1, 1), (1, 1), (1, 1)
    )
    actual = deform_conv2d(as64["x"], as64["offset"], as64["kernel"], None, 1, 1, 1)
    assert actual.dtype == tf.float64
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-12, rtol=0)


def _copy_main_weights(layer: DeformableConv2D, conv: keras.layers.Conv2D, rng) -> None:
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype(np.float32))
    layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    conv.set_weights([layer.kernel.numpy(), layer.bias.numpy()])


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("kernel_size, dilation", [(1, 1), (3, 1), (3, 2), (5, 1), ((3, 5), (2, 1))])
def test_new_layer_is_a_plain_same_convolution(rng, kernel_size, dilation, modulated):
    x = rng.normal(size=(2, 9, 8, 3)).astype(np.float32)
    layer = DeformableConv2D(4, kernel_size, dilation_rate=dilation, modulated=modulated)
    conv = keras.layers.Conv2D(4, kernel_size, padding="same", dilation_rate=dilation)
    layer.build(x.shape)
    conv.build(x.shape)
    _copy_main_weights(layer, conv, rng)
    np.testing.assert_allclose(layer(x).numpy(), conv(x).numpy(), atol=1e-5, rtol=0)


def test_offset_branch_steers_the_sampling(rng):
    """A constant offset bias of (dy, dx) = (1, -2) on every tap equals a valid
    convolution of the zero-extended input shifted by that many pixels."""
    x = rng.normal(size=(1, 7, 8, 2)).astype(np.float32)
    layer = DeformableConv2D(3, 3)
    conv = keras.layers.Conv2D(3, 3, padding="valid")
    layer.build(x.shape)
    conv.build(x.shape)
    _copy_main_weights(layer, conv, rng)
    layer.offset_bias.assign(np.tile(np.float32([1.0, -2.0]), 9))
    margin = 4
    extended = np.pad(x, [(0, 0), (margin, margin), (margin, margin), (0, 0)])
    # Window of the "same" padded grid: padded pixel (Y, X) is x[Y - 1 + 1, X - 1 - 2].
    window = extended[:, margin : margin + 7 + 2, margin - 3 : margin - 3 + 8 + 2]
    np.testing.assert_allclose(layer(x).numpy(), conv(window).numpy(), atol=1e-5, rtol=0)


def test_mask_branch_modulates(rng):
    """Mask logits of ln(3) on every tap give m = 2 * sigmoid(ln 3) = 1.5: the
    convolution without its bias, scaled by 1.5."""
    x = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    layer = DeformableConv2D(3, 3, modulated=True)
    conv = keras.layers.Conv2D(3, 3, padding="same", use_bias=False)
    layer.build(x.shape)
    conv.build(x.shape)
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype(np.float32))
    conv.set_weights([layer.kernel.numpy()])
    layer.mask_bias.assign(np.full(9, np.log(3.0), np.float32))
    np.testing.assert_allclose(layer(x).numpy(), 1.5 * conv(x).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("modulated", [False, True])
def test_branch_variables_are_named_offset_and_mask(modulated):
    filters, kh, kw, cin = 5, 3, 3, 2
    layer = DeformableConv2D(filters, (kh, kw), modulated=modulated)
    layer.build((None, None, None, cin))
    taps = kh * kw
    offset_shapes = {(kh, kw, cin, 2 * taps), (2 * taps,)}
    mask_shapes = {(kh, kw, cin, taps), (taps,)}
    main_shapes = {(kh, kw, cin, filters), (filters,)}
    seen = []
    for v in layer.weights:
        shape = tuple(v.shape)
        if shape in offset_shapes:
            assert "offset" in v.name and "offset" in v.path, (v.name, v.path)
            seen.append("offset")
        elif shape in mask_shapes:
            assert "mask" in v.name and "mask" in v.path, (v.name, v.path)
            seen.append("mask")
        else:
            assert shape in main_shapes
            assert "offset" not in v.path and "mask" not in v.path
            seen.append("main")
    assert sorted(seen) == sorted(["main"] * 2 + ["offset"] * 2 + ["mask"] * 2 * modulated)


@pytest.mark.parametrize(
    "kwargs, size, expected",
    [
        (dict(kernel_size=3, strides=2, padding="same"), (9, 8), (5, 4)),
        (dict(kernel_size=3, padding="valid"), (9, 8), (7, 6)),
        (dict(kernel_size=(2, 3), padding=(1, 0)), (9, 8), (10, 6)),
        (dict(kernel_size=3, dilation_rate=2, padding=1), (9, 8), (7, 6)),
    ],
)
def test_output_shape(rng, kwargs, size, expected):
    layer = DeformableConv2D(2, **kwargs)
    x = rng.normal(size=(2, *size, 3)).astype(np.float32)
    y = layer(x)
    assert tuple(y.shape) == (2, *expected, 2)
    assert layer.compute_output_shape((2, *size, 3)) == (2, *expected, 2)
    assert layer.compute_output_shape((None, None, None, 3)) == (None, None, None, 2)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        DeformableConv2D(2, 4, padding="same")
    with pytest.raises(ValueError):
        DeformableConv2D(2, 3, padding="full")
    with pytest.raises(ValueError):
        DeformableConv2D(2, 3, strides=2, dilation_rate=2)


@pytest.mark.parametrize("modulated", [False, True])
def test_layer_dynamic_shapes_config_and_saving(rng, layer_checks, modulated):
    layer = DeformableConv2D(3, 3, strides=2, modulated=modulated)
    specs = [tf.TensorSpec([None, None, None, 2], tf.float32)]
    inputs_a = [rng.normal(size=(1, 8, 10, 2)).astype(np.float32)]
    inputs_b = [rng.normal(size=(3, 7, 5, 2)).astype(np.float32)]
    layer(inputs_a[0])
    layer_checks.randomize(layer)
    layer_checks.dynamic_shapes(layer, specs, inputs_a, inputs_b)
    layer_checks.config_roundtrip(layer, inputs_b)
    layer_checks.save_load(layer, specs, inputs_b)


def _loss_and_gradients(case: dict, r: np.ndarray, geometry: dict, with_mask: bool):
    """``sum(deform_conv2d(...) * r)`` and its gradients for ``x, offset, kernel, bias``
    (and ``mask``), from the layer's hand-written backward pass."""
    names = ["x", "offset", "kernel", "bias"] + (["mask"] if with_mask else [])
    tensors = {name: tf.constant(case[name]) for name in names}
    with tf.GradientTape() as tape:
        tape.watch(list(tensors.values()))
        y = deform_conv2d(**tensors, **geometry)
        loss = tf.reduce_sum(y * r)
    grads = tape.gradient(loss, list(tensors.values()))
    return float(loss), dict(zip(names, (g.numpy() for g in grads)))


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize(
    "kernel_size, strides, padding, dilation",
    [
        ((3, 3), (1, 1), (1, 1), (1, 1)),
        ((3, 3), (2, 1), (0, 2), (1, 1)),
        ((2, 3), (1, 1), (1, 1), (2, 1)),
    ],
)
def test_gradients_match_central_differences(rng, kernel_size, strides, padding, dilation,
                                              with_mask):
    """Every gradient (float64, odd sizes, several geometries) against central
    differences of the loss along random directions: independent of the backward pass."""
    case = _random_case(rng, 2, 7, 9, 3, 5, kernel_size, strides, padding, dilation, 1.7)
    case = {name: value.astype(np.float64) for name, value in case.items()}
    geometry = dict(strides=strides, padding=padding, dilation=dilation)
    out_shape = deform_conv2d(case["x"], case["offset"], case["kernel"], **geometry).shape
    r = rng.normal(size=out_shape)
    _, grads = _loss_and_gradients(case, r, geometry, with_mask)
    step = 1e-6
    for name, grad in grads.items():
        assert grad.shape == case[name].shape, name
        for _ in range(3):
            direction = rng.normal(size=grad.shape)
            plus, minus = dict(case), dict(case)
            plus[name] = case[name] + step * direction
            minus[name] = case[name] - step * direction
            numeric = (
                _loss_and_gradients(plus, r, geometry, with_mask)[0]
                - _loss_and_gradients(minus, r, geometry, with_mask)[0]
            ) / (2 * step)
            np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=1e-6, atol=1e-6,
                                       err_msg=name)


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("batch", [1, 3])
def test_batch_groups_leave_output_and_gradients_unchanged(rng, monkeypatch, batch, groups):
    """The batch cut into compiled loops of one group each (uneven groups, and more
    groups than images): the output equals the brute force and every gradient, the
    mask's included, equals that of a single group."""
    case = _random_case(rng, batch, 6, 7, 2, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1.5)
    geometry = dict(strides=1, padding=1, dilation=1)
    r = rng.normal(size=(batch, 6, 7, 3)).astype(np.float32)
    monkeypatch.setattr(deform_conv_module, "PARALLEL_GROUPS", 1)
    _, single = _loss_and_gradients(case, r, geometry, with_mask=True)
    monkeypatch.setattr(deform_conv_module, "PARALLEL_GROUPS", groups)
    _, grouped = _loss_and_gradients(case, r, geometry, with_mask=True)
    expected, _ = brute_force_deform_conv(
        case["x"], case["offset"], case["kernel"], case["bias"], (1, 1), (1, 1), (1, 1),
        mask=case["mask"],
    )
    actual = deform_conv2d(**{name: case[name] for name in ("x", "offset", "kernel", "bias", "mask")},
                           **geometry)
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-4, rtol=0)
    for name, grad in single.items():
        np.testing.assert_allclose(grouped[name], grad, atol=1e-4, rtol=1e-6, err_msg=name)


def test_bfloat16_input_is_computed_in_float32(rng):
    """A bfloat16 input gives the float32 result on the same (bfloat16) values, rounded
    once: XLA's CPU loops are slow in bfloat16, and rounding only the output is closer."""
    case = _random_case(rng, 2, 6, 7, 2, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1.5)
    bf16 = {name: tf.cast(value, tf.bfloat16) for name, value in case.items()}
    actual = deform_conv2d(bf16["x"], bf16["offset"], bf16["kernel"], bf16["bias"], padding=1,
                           mask=bf16["mask"])
    as32 = {name: tf.cast(value, tf.float32) for name, value in bf16.items()}
    expected = deform_conv2d(as32["x"], as32["offset"], as32["kernel"], as32["bias"], padding=1,
                             mask=as32["mask"])
    assert actual.dtype == tf.bfloat16
    np.testing.assert_array_equal(tf.cast(actual, tf.float32).numpy(),
                                  tf.cast(tf.cast(expected, tf.bfloat16), tf.float32).numpy())


def test_gradients_with_none_dimensions_in_tf_function(rng):
    """Traced once with ``None`` batch and image sizes, the gradients at two sizes equal
    the eager ones."""
    kernel = tf.constant(rng.normal(size=(3, 3, 2, 4)).astype(np.float32))
    spec = [tf.TensorSpec([None, None, None, 2]), tf.TensorSpec([None, None, None, 18]),
            tf.TensorSpec([None, None, None, 4])]

    def gradients(x, offset, r):
        with tf.GradientTape() as tape:
            tape.watch([x, offset, kernel])
            loss = tf.reduce_sum(deform_conv2d(x, offset, kernel, strides=2, padding=1) * r)
        return tape.gradient(loss, [x, offset, kernel])

    traced = tf.function(gradients, input_signature=spec)
    for batch, height, width in ((1, 9, 6), (3, 5, 12)):
        out_h, out_w = (height + 1) // 2, (width + 1) // 2
        inputs = [
            tf.constant(rng.normal(size=(batch, height, width, 2)).astype(np.float32)),
            tf.constant(rng.normal(0.0, 2.0, size=(batch, out_h, out_w, 18)).astype(np.float32)),
            tf.constant(rng.normal(size=(batch, out_h, out_w, 4)).astype(np.float32)),
        ]
        for graph, eager in zip(traced(*inputs), gradients(*inputs)):
            np.testing.assert_allclose(graph.numpy(), eager.numpy(), atol=1e-5, rtol=0)
    assert traced.experimental_get_tracing_count() == 1


def test_empty_batch_gives_empty_output_and_zero_gradients(rng):
    x = tf.zeros([0, 6, 5, 2])
    offset = tf.zeros([0, 6, 5, 18])
    kernel = tf.constant(rng.normal(size=(3, 3, 2, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch([x, offset, kernel])
        y = deform_conv2d(x, offset, kernel, padding=1)
        loss = tf.reduce_sum(y)
    assert tuple(y.shape) == (0, 6, 5, 3)
    grads = tape.gradient(loss, [x, offset, kernel])
    assert [tuple(g.shape) for g in grads] == [(0, 6, 5, 2), (0, 6, 5, 18), (3, 3, 2, 3)]
    assert not np.any(grads[2].numpy())


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_policy(rng, policy):
    """Under a mixed policy the layer returns the low precision (bfloat16 computed in
    float32 inside) and stays close to float32, gradients included."""
    x = tf.constant(rng.uniform(0.0, 1.0, size=(2, 8, 7, 3)).astype(np.float32))
    reference = DeformableConv2D(4, 3, modulated=True)
    reference.build(x.shape)
    for variable in reference.trainable_variables:
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype(np.float32))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        mixed = DeformableConv2D(4, 3, modulated=True)
        mixed.build(x.shape)
    finally:
        keras.config.set_dtype_policy(previous)
    mixed.set_weights(reference.get_weights())
    outputs = []
    for layer in (reference, mixed):
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32))
        outputs.append((y, tape.gradient(loss, layer.kernel)))
    (y32, grad32), (y16, grad16) = outputs
    assert y16.dtype == mixed.compute_dtype
    np.testing.assert_allclose(tf.cast(y16, tf.float32).numpy(), y32.numpy(), atol=0.1, rtol=0.05)
    np.testing.assert_allclose(grad16.numpy(), grad32.numpy(), atol=0.5, rtol=0.05)
