"""tf.data pipelines: element structure, determinism, crop ground truth, flips, padding, epochs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from layers import warp_affine, warp_flow
from rfnet_tf.data.io import Pair
from rfnet_tf.data.pipelines import (
    Stream, affinenet_dataset, f2m_dataset, steps_per_epoch, transnet_dataset
)
from rfnet_tf.data.synthetic import (
    AffineRanges,
    Curriculum,
    LocalFieldRanges,
    flip_affine,
    flip_flow,
)

CROP = (32, 40)  # not square, so that height and width cannot be swapped unnoticed
BATCH = 2
NUM_BATCHES = 6
# At a 32 x 40 crop the default field would move pixels by under a pixel; these ranges
# make the local misalignment large enough to see.
TEST_FIELD = LocalFieldRanges(
    max_displacement_range=(2.0, 4.0), control_spacing=16.0, reference_size=None
)
DATASETS = {
    "transnet": transnet_dataset,
    "affinenet": affinenet_dataset,
    "f2m": lambda *args, **kwargs: f2m_dataset(*args, ranges=TEST_FIELD, **kwargs),
}
# Channel 2 of each colour test VIS is this constant: it tells which pair an element came from.
PAIR_TAGS = {"big": 0.2, "short": 0.4, "narrow": 0.6}


def ramp_pair(name: str, height: int, width: int, grey: bool = False) -> Pair:
    """VIS channels 0, 1 linear in (y, x) (bilinear resampling is exact), channel 2 a tag.

    The NIR is the channel mean, so it is the mean of the aligned VIS.
    """
    yy, xx = np.meshgrid(np.linspace(0.1, 0.9, height), np.linspace(0.0, 1.0, width), indexing="ij")
    vis = np.stack([yy, xx, np.full_like(yy, PAIR_TAGS.get(name, 0.0))], axis=-1).astype(np.float32)
    if grey:
        vis = vis[..., :1]
    return Pair(name=name, vis=vis, nir=vis.mean(axis=-1, keepdims=True))


PAIRS = [
    ramp_pair("big", 110, 120),
    ramp_pair("short", 24, 70),  # shorter than the crop: reflect-padded
    ramp_pair("narrow", 90, 50),
    ramp_pair("grey", 48, 64, grey=True),
]


def source_of(element: dict[str, np.ndarray]) -> str:
    """Which of PAIRS an element was cut from."""
    real = element["mask"][..., 0] == 1.0
    vis = element["vis"][real]
    if np.array_equal(vis[:, 0], vis[:, 2]):
        return "grey"
    (tag,) = np.unique(np.round(vis[:, 2], 2))
    return next(name for name, value in PAIR_TAGS.items() if np.isclose(value, tag))


def take(dataset: tf.data.Dataset, count: int = NUM_BATCHES) -> list[dict[str, np.ndarray]]:
    return [{key: value.numpy() for key, value in batch.items()} for batch in dataset.take(count)]


def unbatched(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [
        {key: value[i] for key, value in batch.items()} for batch in batches for i in range(BATCH)
    ]


@pytest.fixture(scope="module")
def flipped_datasets() -> dict[str, tf.data.Dataset]:
    return {
        stage: make(PAIRS, Stream(crop_size=CROP, batch_size=BATCH, seed=1))
        for stage, make in DATASETS.items()
    }


@pytest.fixture(scope="module")
def flipped(flipped_datasets) -> dict[str, list[dict[str, np.ndarray]]]:
    return {stage: take(dataset) for stage, dataset in flipped_datasets.items()}


@pytest.fixture(scope="module")
def plain() -> dict[str, list[dict[str, np.ndarray]]]:
    """The same elements without flips."""
    return {
        stage: take(make(PAIRS, Stream(crop_size=CROP, batch_size=BATCH, seed=1, flips=False)))
        for stage, make in DATASETS.items()
    }


def interior(mask: np.ndarray, border: int = 1) -> np.ndarray:
    eroded = scipy.ndimage.binary_erosion(mask, iterations=border)
    eroded[:border], eroded[-border:], eroded[:, :border], eroded[:, -border:] = (
        False,
        False,
        False,
        False,
    )
    return eroded


@pytest.mark.parametrize("stage", list(DATASETS))
def test_element_structure_and_ranges(flipped_datasets, flipped, stage):
    expected = {"vis": (BATCH, *CROP, 3), "nir": (BATCH, *CROP, 1), "mask": (BATCH, *CROP, 1)}
    if stage == "affinenet":
        expected["affine"] = (BATCH, 2, 3)
    if stage == "f2m":
        expected["flow"] = (BATCH, *CROP, 2)
        expected["jitter"] = (BATCH, 2, 2)
    assert {
        key: tuple(spec.shape) for key, spec in flipped_datasets[stage].element_spec.items()
    } == expected
    for batch in flipped[stage]:
        assert {key: value.shape for key, value in batch.items()} == expected
        assert all(value.dtype == np.float32 for value in batch.values())
        for key in ("vis", "nir"):
            assert batch[key].min() >= 0.0 and batch[key].max() <= 1.0
        assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
        if stage == "f2m":
            assert np.abs(batch["jitter"]).max() <= 0.5 and np.unique(batch["jitter"]).size == 4 * BATCH
    # Every pair contributes one crop per epoch: 12 elements = 3 epochs of 4 pairs.
    sources = [source_of(element) for element in unbatched(flipped[stage])]
    assert sorted(sources) == sorted([pair.name for pair in PAIRS] * 3)


@pytest.mark.parametrize("stage", list(DATASETS))
def test_two_iterations_give_identical_tensors(flipped_datasets, flipped, stage):
    again = take(flipped_datasets[stage])
    for first, second in zip(flipped[stage], again):
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.parametrize("stage", list(DATASETS))
@pytest.mark.parametrize("start_batch", [1, 3, 4])
def test_a_resumed_stream_continues_the_uninterrupted_one(flipped, stage, start_batch):
    """start_batch=k yields batch k, k+1, ... of the stream, across epoch boundaries
    (an epoch is 2 batches here) and from inside an epoch (k=3)."""
    stream = Stream(crop_size=CROP, batch_size=BATCH, seed=1, start_batch=start_batch)
    resumed = DATASETS[stage](PAIRS, stream)
    expected = flipped[stage][start_batch:]
    for first, second in zip(expected, take(resumed, NUM_BATCHES - start_batch)):
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])


def test_another_seed_gives_other_elements(flipped):
    other = take(DATASETS["affinenet"](PAIRS, Stream(crop_size=CROP, batch_size=BATCH, seed=2)))
    for first, second in zip(flipped["affinenet"], other):
        assert not np.array_equal(first["vis"], second["vis"])
        assert not np.array_equal(first["affine"], second["affine"])


@pytest.mark.parametrize("stage", ["affinenet", "f2m"])
def test_ground_truth_registers_the_moving_crop_onto_the_fixed_crop(flipped, stage):
    # The elements are flipped: this also checks that flips keep images and ground truth consistent.
    for element in unbatched(flipped[stage]):
        vis, mask = element["vis"][None], element["mask"][None]
        if stage == "affinenet":
            registered, _ = warp_affine(vis, element["affine"][None])
            registered_mask, _ = warp_affine(mask, element["affine"][None])
        else:
            registered, _ = warp_flow(vis, element["flow"][None])
            registered_mask, _ = warp_flow(mask, element["flow"][None])
        valid = interior(registered_mask[0, ..., 0].numpy() > 1.0 - 1e-5)
        assert valid.mean() > 0.3
        # The NIR is the channel mean of the aligned VIS; the mean commutes with warping.
        error = np.abs(registered[0].numpy().mean(axis=-1) - element["nir"][..., 0])[valid]
        unregistered = np.abs(element["vis"].mean(axis=-1) - element["nir"][..., 0])[valid]
        assert error.max() < 5e-4
        assert unregistered.max() > 2e-3  # the misalignment is real, so this test can fail


def test_sampling_frame_draws_the_misalignment_in_another_frame():
    """A rotation about the centre of an H x W frame has |a01| / |a10| = ((H-1)/(W-1))^2
    in normalised units; drawn so for a square crop, the ground truth still registers it."""
    rotation_only = AffineRanges(scale_range=(1.0, 1.0), max_shear=0.0, max_translation=0.0)
    square = [ramp_pair("big", 110, 120)]
    frame = (101, 201)  # aspect (W-1)/(H-1) = 2
    batch = take(
        affinenet_dataset(square, Stream(crop_size=(32, 32), batch_size=2, seed=3, flips=False),
                          ranges=rotation_only, sampling_frame=frame),
        1,
    )[0]
    for affine, vis, nir in zip(batch["affine"], batch["vis"], batch["nir"]):
        np.testing.assert_allclose(abs(affine[0, 1]) / abs(affine[1, 0]), 0.25, rtol=1e-3)
        registered, mask = warp_affine(vis[None], affine[None])
        valid = interior(mask[0, ..., 0].numpy() > 0.5, border=2)
        error = np.abs(registered[0].numpy().mean(axis=-1) - nir[..., 0])[valid]
        assert error.max() < 5e-4


def flip_array(image: np.ndarray, vertical: bool, horizontal: bool) -> np.ndarray:
    image = image[::-1] if vertical else image
    return image[:, ::-1] if horizontal else image


def find_flip(flipped: np.ndarray, plain: np.ndarray) -> tuple[bool, bool]:
    """The (vertical, horizontal) flip that maps ``plain`` onto ``flipped``."""
    for vertical, horizontal in itertools.product((False, True), repeat=2):
        if np.array_equal(flip_array(plain, vertical, horizontal), flipped):
            return vertical, horizontal
    raise AssertionError("the flipped element is no flip of the plain one")


@pytest.mark.parametrize("stage", list(DATASETS))
def test_flips_apply_to_images_mask_and_ground_truth_alike(flipped, plain, stage):
    seen = set()
    for with_flip, without in zip(unbatched(flipped[stage]), unbatched(plain[stage])):
        vertical, horizontal = find_flip(with_flip["vis"], without["vis"])
        seen.add((vertical, horizontal))
        np.testing.assert_array_equal(
            with_flip["nir"], flip_array(without["nir"], vertical, horizontal)
        )
        np.testing.assert_array_equal(
            with_flip["mask"], flip_array(without["mask"], vertical, horizontal)
        )
        if stage == "affinenet":
            np.testing.assert_allclose(
                with_flip["affine"], flip_affine(without["affine"], vertical, horizontal), atol=1e-7
            )
        if stage == "f2m":
            np.testing.assert_allclose(
                with_flip["flow"], flip_flow(without["flow"], vertical, horizontal), atol=1e-7
            )
    assert len(seen) >= 3


def find_window(crop: np.ndarray, image: np.ndarray) -> tuple[int, int]:
    """The offset at which ``crop`` is a window of ``image``."""
    height, width = crop.shape[:2]
    for top in range(image.shape[0] - height + 1):
        for left in range(image.shape[1] - width + 1):
            if np.array_equal(image[top : top + height, left : left + width], crop):
                return top, left
    raise AssertionError("the crop is no window of the image")


def test_transnet_crops_are_windows_reflect_padded_where_the_image_is_small(plain):
    pairs = {pair.name: pair for pair in PAIRS}
    height, width = CROP
    for element in unbatched(plain["transnet"]):
        pair = pairs[source_of(element)]
        vis = (
            pair.vis if pair.vis.shape[-1] == 3 else np.repeat(pair.vis, 3, axis=-1)
        )  # grey replicated
        if pair.name != "short":
            top, left = find_window(element["nir"], pair.nir)
            np.testing.assert_array_equal(
                element["vis"], vis[top : top + height, left : left + width]
            )
            assert element["mask"].min() == 1.0
            continue
        # 24 rows in a 32-row crop: 4 mirrored rows above and below, masked out.
        pad = (height - pair.height) // 2
        rows = np.zeros(height, bool)
        rows[pad : pad + pair.height] = True
        np.testing.assert_array_equal(element["mask"][..., 0], np.broadcast_to(rows[:, None], CROP))
        _, left = find_window(element["nir"][rows], pair.nir)
        for image, crop in ((pair.nir, element["nir"]), (vis, element["vis"])):
            window = image[:, left : left + width]
            np.testing.assert_array_equal(
                crop,
                np.pad(window, ((pad, height - pair.height - pad), (0, 0), (0, 0)), mode="reflect"),
            )


@pytest.mark.parametrize("stage", ["affinenet", "f2m"])
def test_moving_crops_sample_real_content_when_possible(flipped, stage):
    # The big image leaves room for every misalignment: no black border, no padding.
    big = [element for element in unbatched(flipped[stage]) if source_of(element) == "big"]
    assert len(big) == 3
    for element in big:
        assert element["mask"].min() == 1.0


def test_epochs_visit_every_pair_crops_per_image_times():
    constant = [
        Pair(
            f"p{i}",
            np.full((40, 40, 3), i / 10, np.float32),
            np.full((40, 40, 1), i / 10, np.float32),
        )
        for i in range(3)
    ]
    dataset = transnet_dataset(
        constant, Stream(crop_size=32, batch_size=BATCH, crops_per_image=2, epochs=2)
    )
    batches = take(dataset, 100)
    assert (
        len(batches)
        == 2 * 3 * 2 // BATCH
        == 2 * steps_per_epoch(constant, BATCH, crops_per_image=2)
    )
    labels = np.round([10 * element["nir"][0, 0, 0] for element in unbatched(batches)]).astype(int)
    for epoch in (labels[:6], labels[6:]):
        np.testing.assert_array_equal(np.bincount(epoch, minlength=3), [2, 2, 2])
    assert not np.array_equal(labels[:6], labels[6:])  # reshuffled per epoch


def test_steps_per_epoch_and_bad_arguments():
    assert steps_per_epoch(10, 4) == 3
    assert steps_per_epoch(PAIRS, 4, crops_per_image=3) == 3
    with pytest.raises(ValueError, match="no pairs"):
        transnet_dataset([], Stream(crop_size=32))
    with pytest.raises(ValueError, match="positive"):
        transnet_dataset(PAIRS, Stream(crop_size=32, batch_size=0))


def test_a_folding_field_fails_loudly():
    folding = LocalFieldRanges(
        max_displacement_range=(40.0, 40.0), control_spacing=8.0, reference_size=None
    )
    dataset = f2m_dataset(PAIRS[:1], Stream(crop_size=CROP, batch_size=1), ranges=folding)
    with pytest.raises(tf.errors.InvalidArgumentError, match="did not converge"):
        take(dataset, 1)


@pytest.mark.parametrize("stage", ["affinenet", "f2m"])
def test_a_curriculum_grows_the_misalignment_from_nothing_to_the_full_stream(stage):
    """From magnitude 0 at batch 0 to 1 at batch 2: batch 0 is unmisaligned, and from
    batch 2 on the stream equals the stream without a curriculum (the same random keys)."""
    curriculum = Curriculum(steps=2, start=0.0)
    stream = Stream(crop_size=CROP, batch_size=BATCH, seed=5)
    grown = take(DATASETS[stage](PAIRS, stream, curriculum=curriculum), 4)
    full = take(DATASETS[stage](PAIRS, stream), 4)
    truth = "affine" if stage == "affinenet" else "flow"
    identity = np.zeros_like(grown[0][truth]) if truth == "flow" else np.broadcast_to(
        np.eye(2, 3, dtype=np.float32), grown[0][truth].shape
    )
    np.testing.assert_allclose(grown[0][truth], identity, atol=1e-5)
    assert not np.allclose(full[0][truth], identity, atol=1e-3)
    half = np.abs(grown[1][truth] - identity).max()
    assert 0.2 * np.abs(full[1][truth] - identity).max() < half < np.abs(full[1][truth] - identity).max()
    for later in (2, 3):
        for key in full[later]:
            np.testing.assert_allclose(grown[later][key], full[later][key], atol=1e-5)


def test_a_translation_is_misaligned_cropped_and_flipped_exactly_like_the_vis():
    """Given each pair's VIS channel 1 as its 'translation', every element's
    ``translated`` equals its ``vis`` channel 1: one warp, one crop, one flip for both."""
    translations = [pair.vis[..., 1:2] if pair.vis.shape[-1] == 3 else pair.vis for pair in PAIRS]
    stream = Stream(crop_size=CROP, batch_size=BATCH, seed=1)
    batches = take(affinenet_dataset(PAIRS, stream, translated=translations), 3)
    plain = take(affinenet_dataset(PAIRS, stream), 3)
    for batch, reference in zip(batches, plain):
        assert batch["translated"].shape == (BATCH, *CROP, 1)
        np.testing.assert_allclose(batch["translated"][..., 0], batch["vis"][..., 1], atol=1e-6)
        for key, value in reference.items():
            np.testing.assert_allclose(batch[key], value, atol=1e-6, err_msg=key)


def test_translations_must_match_the_pairs():
    with pytest.raises(ValueError, match="2 extra VIS channel arrays for 4 pairs"):
        affinenet_dataset(PAIRS, Stream(crop_size=CROP), translated=[np.zeros((4, 4, 1))] * 2)
    with pytest.raises(ValueError, match="big: extra VIS channels of shape"):
        affinenet_dataset(PAIRS, Stream(crop_size=CROP), translated=[np.zeros((4, 4, 1))] * 4)


def test_a_crops_local_field_is_a_window_of_its_whole_images_field():
    """A crop is a window of its image: with ``reference_size`` set, the field's amplitude
    and control spacing scale with the image's smaller side, not the crop's, and the
    crop sees a window of the field drawn over the whole image (evaluate.py draws that
    field). Amplitude fixed at 3 px at 48 px: on an image whose smaller side is 96 px
    the whole field peaks at 6 px, so does a crop of the whole image, and a small crop
    never exceeds it."""
    ranges = LocalFieldRanges(max_displacement_range=(3.0, 3.0), control_spacing=16.0, reference_size=48)
    image = ramp_pair("big", 96, 120)

    def peaks(crop):
        stream = Stream(crop_size=crop, batch_size=BATCH, seed=2)
        flows = np.concatenate([b["flow"] for b in take(f2m_dataset([image], stream, ranges=ranges), 3)])
        return np.linalg.norm(flows, axis=-1).max(axis=(1, 2))

    np.testing.assert_allclose(peaks((96, 120)), 6.0, rtol=0.15)
    small = peaks(CROP)
    assert np.all(small < 6.0 * 1.15) and np.all(small > 0.5)
    # The control spacing is the image's, 16 * 96 / 48 = 32 px, whatever the crop.
    np.testing.assert_array_equal(ranges.window_grid_shape(96, 120, 96).numpy(), [4, 5])
    np.testing.assert_array_equal(ranges.window_grid_shape(96, 120, 48).numpy(), [7, 8])
    assert ranges.control_grid_shape(96, 120) == (4, 5)
