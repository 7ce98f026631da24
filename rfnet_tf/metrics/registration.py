"""Registration geometry and accuracy metrics (numpy; paper Table 1, ARCHITECTURE section 6).

Geometry. A registration is a backward warp from the fixed (NIR) frame into the moving
(VIS) image: ``registered[p] = moving[T(p)]`` for every fixed pixel ``p``. With an
affine ``theta`` (normalised align-corners convention, ``[u, v, 1]`` order, ARCHITECTURE
section 1) and a dense flow ``phi`` on the fixed grid (``(dy, dx)`` pixels), RFNet's
full registration warps the coarse-registered image by the flow, so

    T(p) = T_theta(p + phi(p)),

with ``T_theta`` the affine's pixel map; either part may be absent (identity). A fixed
landmark ``q`` therefore corresponds to the moving point ``T(q)``.

Landmark error (decision). The paper measures "the Euclidean distance between the
deformed source points and target points": the moving (VIS) landmarks are carried into
the registered, fixed frame and compared with the fixed (NIR) landmarks there, in fixed
pixels. ``map_moving_to_fixed`` computes that carried point ``T^-1(q_moving)`` (exactly
for an affine; by fixed-point iteration for a flow) and the error of landmark ``i`` is
``d_i = |T^-1(q_moving_i) - q_fixed_i|``. For the identity (with equal image sizes) this
is exactly ``|q_moving - q_fixed|``. ``map_fixed_to_moving`` gives the other reading,
``|T(q_fixed) - q_moving|`` in moving pixels; the two agree up to the local scale of T.

Points are ``(N, 2)`` arrays of ``(y, x)`` zero-based pixel coordinates (convert 1-based
``[x, y]`` landmark files at the file boundary). Image-similarity metrics take luma on
the 0-255 scale (float).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rfnet_tf.conventions import MASK_TOLERANCE_PX


# SSIM (Wang et al., IEEE TIP 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
# K2 = 0.03, dynamic range L = 255.
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0


def _shape2(shape) -> tuple[int, int]:
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"image shape must be positive, got {shape}")
    return height, width


def _normaliser(shape) -> np.ndarray:
    """``(3, 3)`` matrix taking homogeneous pixel ``[x, y, 1]`` to ``[u, v, 1]``.

    A one-pixel axis has no extent to normalise; as in layers/resampler.py it maps to
    ``u = -1`` and back to 0.
    """
    height, width = _shape2(shape)
    sx = 2.0 / max(width - 1, 1)
    sy = 2.0 / max(height - 1, 1)
    return np.array([[sx, 0.0, -1.0], [0.0, sy, -1.0], [0.0, 0.0, 1.0]])


def _homogeneous(theta: np.ndarray) -> np.ndarray:
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (2, 3):
        raise ValueError(f"an affine must have shape (2, 3), got {theta.shape}")
    return np.vstack([theta, [0.0, 0.0, 1.0]])


def affine_to_pixel_matrix(theta: np.ndarray, fixed_shape, moving_shape=None) -> np.ndarray:
    """Pixel-space form of a normalised backward affine.

    Args:
      theta: ``(2, 3)`` affine on normalised align-corners coordinates (``[u, v, 1]``).
      fixed_shape: ``(H, W, ...)`` of the output (fixed) frame.
      moving_shape: ``(H, W, ...)`` of the sampled (moving) image; default fixed_shape.

    Returns:
      ``(2, 3)`` float64 ``M`` with ``[x', y'] = M @ [x, y, 1]``: the moving pixel
      (column ``x'``, row ``y'``) sampled by fixed pixel ``(x, y)``. This is OpenCV's
      convention for ``warpAffine(..., WARP_INVERSE_MAP)`` and ``findTransformECC``.
    """
    moving_shape = fixed_shape if moving_shape is None else moving_shape
    from_normalised = np.linalg.inv(_normaliser(moving_shape))
    full = from_normalised @ _homogeneous(theta) @ _normaliser(fixed_shape)
    return full[:2]


def pixel_matrix_to_affine(matrix: np.ndarray, fixed_shape, moving_shape=None) -> np.ndarray:
    """Inverse of ``affine_to_pixel_matrix``: pixel ``(2, 3)`` ``[x, y, 1]`` -> normalised theta."""
    moving_shape = fixed_shape if moving_shape is None else moving_shape
    to_pixels = np.linalg.inv(_normaliser(fixed_shape))
    full = _normaliser(moving_shape) @ _homogeneous(matrix) @ to_pixels
    return full[:2]


def _as_points(points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2) as (y, x), got {points.shape}")
    return points


def _apply_pixel_matrix(matrix: np.ndarray, points_yx: np.ndarray) -> np.ndarray:
    """``[x', y'] = M @ [x, y, 1]`` on ``(..., 2)`` ``(y, x)`` points."""
    x = points_yx[..., 1]
    y = points_yx[..., 0]
    new_x = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]
    new_y = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    return np.stack([new_y, new_x], axis=-1)


def _check_flow(flow: np.ndarray, fixed_shape) -> np.ndarray:
    flow = np.asarray(flow, dtype=np.float64)
    height, width = _shape2(fixed_shape)
    if flow.shape != (height, width, 2):
        raise ValueError(f"flow must have shape {(height, width, 2)} (dy, dx), got {flow.shape}")
    return flow


def interpolate_flow(flow: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear value of a flow ``(H, W, 2)`` at ``(..., 2)`` ``(y, x)`` points.

    Points are clamped into ``[0, H-1] x [0, W-1]`` (the flow is only defined on the
    grid; its border value is the best extension).
    """
    height, width = flow.shape[:2]
    y = np.clip(points[..., 0], 0.0, height - 1.0)
    x = np.clip(points[..., 1], 0.0, width - 1.0)
    y0 = np.minimum(np.floor(y).astype(np.int64), max(height - 2, 0))
    x0 = np.minimum(np.floor(x).astype(np.int64), max(width - 2, 0))
    y1 = np.minimum(y0 + 1, height - 1)
    x1 = np.minimum(x0 + 1, width - 1)
    fy = (y - y0)[..., None]
    fx = (x - x0)[..., None]
    top = flow[y0, x0] * (1.0 - fx) + flow[y0, x1] * fx
    bottom = flow[y1, x0] * (1.0 - fx) + flow[y1, x1] * fx
    return top * (1.0 - fy) + bottom * fy


def map_fixed_to_moving(
    points, fixed_shape, moving_shape=None, theta: np.ndarray | None = None, flow: np.ndarray | None = None
) -> np.ndarray:
    """Where fixed-frame points sample the moving image: ``T(q) = T_theta(q + phi(q))``.

    Args:
      points: ``(N, 2)`` fixed-frame ``(y, x)`` pixels (any float, e.g. landmarks).
      fixed_shape, moving_shape: ``(H, W, ...)``; moving_shape defaults to fixed_shape.
      theta: optional ``(2, 3)`` normalised backward affine.
      flow: optional ``(H_fixed, W_fixed, 2)`` backward flow ``(dy, dx)`` in pixels,
        interpolated bilinearly at the points.

    Returns:
      ``(N, 2)`` float64 moving-image ``(y, x)`` pixels.
    """
    points = _as_points(points)
    if flow is not None:
        points = points + interpolate_flow(_check_flow(flow, fixed_shape), points)
    if theta is not None:
        matrix = affine_to_pixel_matrix(theta, fixed_shape, moving_shape)
        points = _apply_pixel_matrix(matrix, points)
    return points


def affine_distance(theta_a, theta_b, shape) -> float:
    """The largest distance, in pixels, between where two normalised backward affines
    ``(2, 3)`` sample an image of ``shape (H, W, ...)`` from its four corners."""
    height, width = shape[:2]
    corners = np.array([[0, 0], [0, width - 1], [height - 1, 0], [height - 1, width - 1]], np.float64)
    difference = map_fixed_to_moving(corners, shape, theta=np.asarray(theta_a)) - map_fixed_to_moving(
        corners, shape, theta=np.asarray(theta_b)
    )
    return float(np.max(np.linalg.norm(difference, axis=-1)))


def map_moving_to_fixed(
    points, fixed_shape, moving_shape=None, theta: np.ndarray | None = None, flow: np.ndarray | None = None,
    iterations: int = 200, tolerance: float = 1e-4,
) -> np.ndarray:
    """Where moving-image points land in the registered (fixed) frame: ``T^-1(q)``.

    The affine part is inverted exactly. The flow part solves ``p + phi(p) = c`` by the
    fixed-point iteration ``p <- c - phi(p)`` from ``p = c``, which converges when the
    flow is a contraction, ``|grad phi| < 1`` (true of gentle fields such as a few pixels
    of smooth local misalignment; a steep field can defeat it even when it is
    invertible). A point whose residual ``|p + phi(p) - c|`` is still above ``tolerance`` pixels after
    ``iterations`` steps is returned as NaN, so that a landmark summary over it is NaN
    rather than silently wrong.

    Args/shapes as ``map_fixed_to_moving``; returns ``(N, 2)`` fixed ``(y, x)`` pixels.
    """
    points = _as_points(points)
    if theta is not None:
        matrix = affine_to_pixel_matrix(theta, fixed_shape, moving_shape)
        inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
        points = _apply_pixel_matrix(inverse, points)
    if flow is None:
        return points
    flow = _check_flow(flow, fixed_shape)
    target = points
    estimate = target.copy()
    for _ in range(iterations):
        update = target - interpolate_flow(flow, estimate)
        converged = np.max(np.abs(update - estimate), initial=0.0) < 1e-9
        estimate = update
        if converged:
            break
    residual = np.linalg.norm(estimate + interpolate_flow(flow, estimate) - target, axis=-1)
    estimate[residual > tolerance] = np.nan
    return estimate


def sampling_coordinates(
    fixed_shape, moving_shape=None, theta: np.ndarray | None = None, flow: np.ndarray | None = None
) -> np.ndarray:
    """``(H, W, 2)`` moving-image ``(y, x)`` coordinates ``T(p)`` of every fixed pixel.

    ``sampling_coordinates(...) - grid`` is the total backward displacement field of a
    registration; the difference of two such maps is what ``endpoint_error`` measures.
    """
    height, width = _shape2(fixed_shape)
    grid = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij"), axis=-1)
    coords = map_fixed_to_moving(grid.reshape(-1, 2), fixed_shape, moving_shape, theta, flow)
    return coords.reshape(height, width, 2)


def warp_image(moving: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear backward warp ``out[p] = moving[coords[p]]`` (numpy twin of layers.resample).

    A bilinear corner outside the image contributes zero (torchvision's rule).

    Args:
      moving: ``(H, W)`` or ``(H, W, C)`` image.
      coords: ``(H', W', 2)`` ``(y, x)`` pixel coordinates into ``moving``.

    Returns:
      ``(warped, mask)``: ``warped`` float64 ``(H', W')`` or ``(H', W', C)``; ``mask``
      bool ``(H', W')``, True where the sample point lies inside ``[0, H-1] x [0, W-1]``.
    """
    moving = np.asarray(moving, dtype=np.float64)
    squeeze = moving.ndim == 2
    image = moving[..., None] if squeeze else moving
    height, width = image.shape[:2]
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    y = coords[..., 0]
    x = coords[..., 1]
    y0 = np.floor(y)
    x0 = np.floor(x)
    fy = (y - y0)[..., None]
    fx = (x - x0)[..., None]
    # Cells with at least one corner in the image; beyond them every corner reads zero.
    cell_inside = ((y0 >= -1) & (y0 <= height - 1) & (x0 >= -1) & (x0 <= width - 1))[..., None]
    row = np.clip(y0, -1, height - 1).astype(np.int64) + 1
    col = np.clip(x0, -1, width - 1).astype(np.int64) + 1
    warped = (
        padded[row, col] * (1 - fy) * (1 - fx)
        + padded[row, col + 1] * (1 - fy) * fx
        + padded[row + 1, col] * fy * (1 - fx)
        + padded[row + 1, col + 1] * fy * fx
    ) * cell_inside
    return (warped[..., 0] if squeeze else warped), inside_image(coords, (height, width))


def inside_image(points, shape) -> np.ndarray:
    """Bool ``(...)``: which ``(..., 2)`` ``(y, x)`` points lie in ``[0, H-1] x [0, W-1]``
    of an image of ``shape`` (``(H, W, ...)``), within :data:`MASK_TOLERANCE_PX`."""
    height, width = _shape2(shape)
    points = np.asarray(points, dtype=np.float64)
    y, x = points[..., 0], points[..., 1]
    tol = MASK_TOLERANCE_PX
    return (y >= -tol) & (y <= height - 1 + tol) & (x >= -tol) & (x <= width - 1 + tol)


def grid_points(shape, per_side: int = 9) -> np.ndarray:
    """``(per_side**2, 2)`` float64 ``(y, x)`` points of a regular grid spanning an image
    of ``shape`` corner to corner: rows ``linspace(0, H-1, per_side)`` times columns
    ``linspace(0, W-1, per_side)``, row-major (the grid of the known-affine metric)."""
    if per_side < 2:
        raise ValueError(f"a grid spanning the image needs 2 or more points a side, not {per_side}")
    height, width = _shape2(shape)
    rows, cols = np.meshgrid(
        np.linspace(0.0, height - 1.0, per_side),
        np.linspace(0.0, width - 1.0, per_side),
        indexing="ij",
    )
    return np.stack([rows.ravel(), cols.ravel()], axis=-1)


def landmark_errors(moving_points_registered, fixed_points) -> np.ndarray:
    """``(N,)`` Euclidean distances between registered moving landmarks and fixed ones.

    Both ``(N, 2)`` in the same frame and coordinate order (the module docstring says
    which frame; ``map_moving_to_fixed`` produces the first argument).
    """
    a = _as_points(moving_points_registered)
    b = _as_points(fixed_points)
    if a.shape != b.shape:
        raise ValueError(f"landmark sets differ in shape: {a.shape} vs {b.shape}")
    return np.linalg.norm(a - b, axis=1)


def landmark_summary(distances) -> dict[str, float]:
    """Paper Table 1 statistics of one image's landmark distances ``d`` (pixels).

    ``rmse = sqrt(mean d^2)``; ``mae = max d`` (the paper's "max ... error");
    ``mee = median d`` (the paper's "median ... error"). NaN in ``d`` gives NaN.
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ValueError("no landmark distances")
    return {
        "rmse": float(np.sqrt(np.mean(d**2))),
        "mae": float(np.max(d)),
        "mee": float(np.median(d)),
    }


def single_channel(image, name: str, dtype=np.float64) -> np.ndarray:
    """``image`` as an ``(H, W)`` array of ``dtype``, a trailing channel of size 1 dropped.

    Raises:
      ValueError: any other shape, naming ``name``.
    """
    image = np.asarray(image, dtype=dtype)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"{name} must be a single-channel (H, W) image, got {image.shape}")
    return image


def _as_mask(mask, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {shape}")
    return mask > 0.5


def registration_psnr(registered_luma, nir, mask=None) -> float:
    """PSNR (dB) between registered VIS luma and NIR on the valid region, 0-255 scale.

    ``10 log10(255^2 / MSE)`` with MSE the mean squared difference over mask pixels
    (all pixels if mask is None); ``inf`` for identical images, NaN for an empty mask.
    """
    a = single_channel(registered_luma, "registered_luma")
    b = single_channel(nir, "nir")
    valid = _as_mask(mask, a.shape)
    if not valid.any():
        return float("nan")
    mse = np.mean((a[valid] - b[valid]) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(DATA_RANGE**2 / mse))


def _gaussian_window() -> np.ndarray:
    taps = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    window = np.exp(-0.5 * (taps / SSIM_SIGMA) ** 2)
    return window / window.sum()


def ssim_map(a, b) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004) of two 0-255 images, ``(H, W)`` float64.

    Local statistics use the separable 11x11 Gaussian window (sigma 1.5, normalised),
    population (biased) variances, ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``.
    Near the border (within 5 px) the window is reflected; ``structural_similarity``
    excludes those pixels.
    """
    a = single_channel(a, "a")
    b = single_channel(b, "b")
    window = _gaussian_window()

    def blur(image: np.ndarray) -> np.ndarray:
        image = ndimage.correlate1d(image, window, axis=0, mode="reflect")
        return ndimage.correlate1d(image, window, axis=1, mode="reflect")

    mu_a = blur(a)
    mu_b = blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    return numerator / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def structural_similarity(a, b, mask=None) -> float:
    """Mean SSIM of two 0-255 images over the mask eroded by the window radius.

    Erosion by an 11x11 square (pixels outside the image count as invalid) keeps only
    pixels whose whole window lies on valid, non-border pixels, so the black border of
    a warped image never enters the statistics. With ``mask=None`` this equals
    scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255)``, which also drops a 5-px border.
    NaN if no pixel survives the erosion.
    """
    a = single_channel(a, "a")
    valid = _as_mask(mask, a.shape)
    size = 2 * SSIM_RADIUS + 1
    valid = ndimage.binary_erosion(valid, structure=np.ones((size, size), bool), border_value=0)
    if not valid.any():
        return float("nan")
    return float(ssim_map(a, b)[valid].mean())


def registration_ssim(registered_luma, nir, mask=None) -> float:
    """SSIM between registered VIS luma and NIR (0-255) on the valid region; see
    ``structural_similarity`` for the window and the border handling."""
    return structural_similarity(registered_luma, nir, mask)


def endpoint_error(flow_pred, flow_true, mask=None) -> float:
    """Mean end-point error (pixels): mean over pixels of ``|flow_pred - flow_true|``.

    Args:
      flow_pred, flow_true: ``(..., H, W, 2)`` displacement (or sampling-coordinate)
        fields in pixels, same shape.
      mask: optional ``(..., H, W)`` or ``(..., H, W, 1)``; pixels where it is > 0.5
        are averaged. NaN for an empty mask.
    """
    pred = np.asarray(flow_pred, dtype=np.float64)
    true = np.asarray(flow_true, dtype=np.float64)
    if pred.shape != true.shape or pred.shape[-1] != 2:
        raise ValueError(f"flows must share a shape (..., 2): {pred.shape} vs {true.shape}")
    distance = np.linalg.norm(pred - true, axis=-1)
    if mask is None:
        return float(distance.mean())
    valid = np.asarray(mask)
    if valid.shape == distance.shape + (1,):
        valid = valid[..., 0]
    if valid.shape != distance.shape:
        raise ValueError(f"mask shape {valid.shape} does not match flow shape {pred.shape}")
    valid = valid > 0.5
    return float(distance[valid].mean()) if valid.any() else float("nan")

