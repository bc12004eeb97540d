"""Common corruptions against imagecorruptions (where installed), hand-computed cases, batching invariance,
and the corruption-accuracy metric."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.metrics.corruption import CORRUPTION_ACCURACY, CorruptionAccuracy
from protobench.metrics.corruptions import (
    CORRUPTIONS,
    DEFOCUS_BLUR,
    MOTION_BLUR,
    RANDOM_CORRUPTIONS,
    SEVERITIES,
    brightness,
    contrast,
    defocus_blur,
    disk_kernel,
    image_generators,
    motion_blur_at,
    reflect101,
)
from protobench.metrics.resampled import percentile_interval, poisson_counts


def natural(h: int, w: int, seed: int) -> np.ndarray:
    """A uint8 HxWx3 test image: smooth colour gradients, a flat block with hard edges, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    image = np.stack([np.sin(6 * x + seed) * 0.5 + 0.5, np.cos(4 * y + 2 * x) * 0.5 + 0.5, x * y], axis=-1)
    image[h // 4 : h // 2, w // 3 : 2 * w // 3] = [0.9, 0.2, 0.1]
    image = image + rng.normal(0, 0.05, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def bootstrap_interval(index: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, seed: int):
    """The expected interval of a ratio of per-image sums: each resample weights image ``index[i]`` by its Poisson
    count (:func:`protobench.metrics.resampled.poisson_counts`); resamples with a zero denominator are undefined."""
    counts = poisson_counts(index, seed)[1:]
    return percentile_interval((counts @ numerator.double() / (counts @ denominator.double())).tolist())


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def to_grey_levels(images: torch.Tensor) -> np.ndarray:
    return images[0].permute(1, 2, 0).double().numpy() * 255


@pytest.fixture(scope="module")
def imagecorruptions():
    """The reference package (skipped where it or its OpenCV / scikit-image do not import).

    It imports ``pkg_resources`` only to find its frost images (unused here); setuptools >= 81 no longer ships
    it, so a stand-in is provided, for the duration of these tests, where it is missing.
    """
    pytest.importorskip("cv2", reason="the OpenCV cross-check needs cv2 (opencv, installed with imagecorruptions in the dev extra)")
    pytest.importorskip("skimage", reason="imagecorruptions needs scikit-image")
    stand_in = None
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("pkg_resources")
        stand_in.resource_filename = lambda package, name: name
        sys.modules["pkg_resources"] = stand_in
    try:
        yield pytest.importorskip("imagecorruptions", reason="the cross-check against imagecorruptions needs it (the dev extra)")
    finally:
        if stand_in is not None and sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


#: Three 64 x 64 images (one pure noise), one 224 x 224 (ImageNet-C's size) and one 32 x 48 (the reference's
#: smallest side; a non-square image, and one where motion blur's longest shifts leave the image).
REFERENCE_IMAGES = [natural(64, 64, 0), natural(64, 64, 1),
                    np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8),
                    natural(224, 224, 3), natural(32, 48, 4)]
DETERMINISTIC = [n for n in CORRUPTIONS if n not in RANDOM_CORRUPTIONS]


def test_severity_zero_is_the_identity():
    images = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    for name, corrupt in CORRUPTIONS.items():
        assert torch.equal(corrupt(images, 0, torch.Generator().manual_seed(1)), images), name
        with pytest.raises(ValueError):
            corrupt(images, 6, None)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_match_imagecorruptions(imagecorruptions, name):
    """Ours is the reference before its uint8 truncation, ``ref <= ours * 255 < ref + 1`` at every pixel,
    where the reference computes in floats (defocus, brightness, contrast); JPEG is PIL's codec itself
    (identical); pixelate is PIL's resize without its 8-bit rounding after each pass (within 1 grey level)."""
    for image in REFERENCE_IMAGES:
        for severity in range(1, 6):
            ref = imagecorruptions.corrupt(image, severity, name).astype(np.float64)
            ours = to_grey_levels(CORRUPTIONS[name](to_tensor(image), severity, None))
            diff = ours - ref
            where = f"{name} severity {severity} at {image.shape[:2]}"
            if name == "jpeg_compression":
                assert np.array_equal(ours.round(), ref), where
            elif name == "pixelate":
                assert np.abs(diff).max() <= 1 + 1e-3, where
                assert np.abs(diff).mean() < 0.6, where
            else:
                assert diff.min() > -1e-3 and diff.max() < 1 + 1e-3, where
                assert np.abs(diff).mean() < 0.6, where


def test_motion_blur_matches_imagecorruptions_at_the_same_angle(imagecorruptions):
    """The reference draws its angle from numpy's global state: draw it the same way and give it to ours."""
    for image in REFERENCE_IMAGES:
        for severity in range(1, 6):
            np.random.seed(severity)
            angle = np.random.uniform(-45, 45)
            np.random.seed(severity)
            ref = imagecorruptions.corrupt(image, severity, "motion_blur").astype(np.float64)
            blurred = motion_blur_at(to_tensor(image), *MOTION_BLUR[severity - 1], torch.tensor([angle]))
            ours = to_grey_levels(blurred)
            diff = ours - ref
            assert diff.min() > -1e-3 and diff.max() < 1 + 1e-3, (severity, image.shape)
            assert np.abs(diff).mean() < 0.6, (severity, image.shape)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise"])
def test_noise_statistics_match_imagecorruptions(imagecorruptions, name):
    """Random streams differ: compare the mean and standard deviation of (corrupted - clean), in grey levels.

    With n values of standard deviation s, each estimate's standard error is about s / sqrt(2n) (std) and
    s / sqrt(n) (mean); the tolerances are 4 standard errors of the difference of two estimates (1.0% to
    5.9% of s on these images). Ours is truncated to uint8 as the reference's is. Adjacent severities differ
    by over 30% in s, so an off-by-one severity table fails.
    """
    np.random.seed(0)
    for k, image in enumerate(REFERENCE_IMAGES):
        for severity in range(1, 6):
            ref = imagecorruptions.corrupt(image, severity, name).astype(np.float64) - image
            g = torch.Generator().manual_seed(10 * k + severity)
            corrupted = to_grey_levels(CORRUPTIONS[name](to_tensor(image), severity, g))
            ours = np.floor(corrupted + 1e-3) - image
            where = f"{name} severity {severity} at {image.shape[:2]}"
            n = ref.size
            assert abs(ours.std() - ref.std()) < 4 * ref.std() / np.sqrt(n), where
            assert abs(ours.mean() - ref.mean()) < 4 * ref.std() * np.sqrt(2 / n), where


def test_disk_kernel_matches_opencv(imagecorruptions):
    from imagecorruptions.corruptions import disk

    for radius, alias_blur in [(3, 0.1), (4, 0.5), (10, 0.5)]:
        np.testing.assert_allclose(disk_kernel(radius, alias_blur).numpy(), disk(radius, alias_blur),
                                   atol=1e-7)


def test_reflect101_matches_opencv_borders_past_the_image():
    cv2 = pytest.importorskip("cv2", reason="the OpenCV cross-check needs cv2 (opencv, installed with imagecorruptions in the dev extra)")
    images = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    for pad in (2, 4, 6, 9, 20):  # torch's reflect padding refuses pad >= 5
        ours = reflect101(images, pad)
        for b, c in [(0, 0), (1, 2)]:
            ref = cv2.copyMakeBorder(images[b, c].numpy(), pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
            assert np.array_equal(ours[b, c].numpy(), ref), pad


def test_defocus_blur_of_images_smaller_than_its_kernel_matches_filter2d():
    """imagecorruptions filters each channel with ``cv2.filter2D`` (reflect-101), whatever the image size."""
    cv2 = pytest.importorskip("cv2", reason="the OpenCV cross-check needs cv2 (opencv, installed with imagecorruptions in the dev extra)")
    images = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    for severity in (1, 5):  # 17 x 17 and 21 x 21 kernels on 8 x 12 images
        kernel = disk_kernel(*DEFOCUS_BLUR[severity - 1]).numpy()
        ours = defocus_blur(images, severity).numpy()[0]
        for c in range(3):
            ref = np.clip(cv2.filter2D(images[0, c].numpy(), -1, kernel), 0, 1)
            np.testing.assert_allclose(ours[c], ref, atol=1e-5)


def test_brightness_by_hand():
    """HSV value + c, hue and saturation kept: RGB scales by V'/V; black becomes grey c."""
    pixels = torch.tensor([[0.2, 0.4, 0.1], [0.0, 0.0, 0.0], [0.9, 0.6, 0.3], [1.0, 0.5, 0.0]])
    images = pixels.T.reshape(1, 3, 2, 2)
    got = brightness(images, 1, None).reshape(3, 4).T  # c = 0.1
    expected = torch.tensor([[0.25, 0.5, 0.125], [0.1, 0.1, 0.1], [1.0, 2 / 3, 1 / 3], [1.0, 0.5, 0.0]])
    torch.testing.assert_close(got, expected)
    got = brightness(images, 3, None).reshape(3, 4).T  # c = 0.3
    expected = torch.tensor([[0.35, 0.7, 0.175], [0.3, 0.3, 0.3], [1.0, 2 / 3, 1 / 3], [1.0, 0.5, 0.0]])
    torch.testing.assert_close(got, expected)


def test_contrast_by_hand():
    """Each channel moves towards its own image mean by the factor c (0.4 at severity 1, 0.05 at 5)."""
    images = torch.zeros(1, 3, 2, 2)
    images[0, 0, 0] = 1.0  # red: mean 0.5
    images[0, 1] = 0.8  # green: flat
    images[0, 2, :, 0] = 0.4  # blue: mean 0.2
    got = contrast(images, 1, None)
    torch.testing.assert_close(got[0, 0], torch.tensor([[0.7, 0.7], [0.3, 0.3]]))
    torch.testing.assert_close(got[0, 1], torch.full((2, 2), 0.8))
    torch.testing.assert_close(got[0, 2], torch.tensor([[0.28, 0.12], [0.28, 0.12]]))
    got = contrast(images, 5, None)
    torch.testing.assert_close(got[0, 0], torch.tensor([[0.525, 0.525], [0.475, 0.475]]))


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_batching_invariance(name):
    """A batch corrupted with one generator per image equals each image corrupted alone with its generator."""
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    indices = torch.tensor([7, 3, 11])
    corrupt = CORRUPTIONS[name]
    for severity in (1, 5):
        batched = corrupt(images, severity, image_generators(0, name, severity, indices))
        alone = torch.cat([
            corrupt(images[i : i + 1], severity, image_generators(0, name, severity, indices[i : i + 1]))
            for i in range(3)
        ])
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)
        assert batched.shape == images.shape and batched.min() >= 0 and batched.max() <= 1
        assert not torch.equal(batched, images)


def test_random_corruptions_follow_their_seeds():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name in RANDOM_CORRUPTIONS:
        first = CORRUPTIONS[name](images, 3, image_generators(0, name, 3, torch.tensor([0, 1])))
        again = CORRUPTIONS[name](images, 3, image_generators(0, name, 3, torch.tensor([0, 1])))
        other = CORRUPTIONS[name](images, 3, image_generators(1, name, 3, torch.tensor([0, 1])))
        assert torch.equal(first, again), name
        assert not torch.equal(first, other), name


class Logits(PrototypeModel):
    """A prototype-less model whose logits are ``logits(x)``."""

    def __init__(self, num_classes: int, logits):
        super().__init__()
        self.num_classes, self.input_size, self.config = num_classes, (32, 32), {}
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))
        self.logits = logits
        self.calls = 0

    def explain(self, x: torch.Tensor) -> Explanation:
        self.calls += 1
        return Explanation(logits=self.logits(x), similarities=x.new_zeros(len(x), 0, 1, 1))


def brightness_model() -> Logits:
    """Class 1 iff the image's mean grey level exceeds 0.5."""
    return Logits(2, lambda x: torch.stack([0.5 - x.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)) - 0.5], 1))


def run(metric: CorruptionAccuracy, model: PrototypeModel, images, labels, batches) -> None:
    for chunk in batches:
        batch = {"image": images[chunk], "label": labels[chunk], "index": torch.as_tensor(chunk)}
        with torch.no_grad():
            metric.update(batch, model.explain(batch["image"]))


def test_metric_on_a_model_that_ignores_its_input_equals_clean_accuracy():
    model = Logits(3, lambda x: torch.tensor([0.0, 1.0, 0.5]).expand(len(x), 3))
    context = EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu"))
    metric = CORRUPTION_ACCURACY.compute(model, context)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 0, 1, 2, 1])
    run(metric, model, images, labels, [[0, 1, 2], [3, 4]])
    result = metric.compute()
    assert result.value == pytest.approx(0.6) and result.detail["clean_accuracy"] == pytest.approx(0.6)
    assert set(result.detail["per_corruption"]) == set(CORRUPTIONS)
    for entry in result.detail["per_corruption"].values():
        assert entry["per_severity"] == [0.6] * 5 and entry["mean"] == pytest.approx(0.6)
    assert model.calls == 2 * (1 + 5 * len(CORRUPTIONS))  # a clean pass and 5 corrupted passes per corruption


def test_metric_by_hand_on_flat_images():
    """Flat grey images 0.32 and 0.46 (label 0) and 0.7 (label 1) under a mean-threshold model.

    Brightness adds 0.1 * severity: 0.32 stays below 0.5 only at severity 1, 0.46 never; 0.7 stays class 1.
    Contrast leaves flat images unchanged. So brightness scores [2/3, 1/3, 1/3, 1/3, 1/3], contrast 1
    throughout.
    """
    model = brightness_model()
    metric = CorruptionAccuracy(model, seed=0, corruptions=("brightness", "contrast"))
    images = torch.tensor([0.32, 0.46, 0.7]).view(3, 1, 1, 1).expand(3, 3, 32, 32).contiguous()
    run(metric, model, images, torch.tensor([0, 0, 1]), [[0, 1, 2]])
    result = metric.compute()
    brightness_accuracy = result.detail["per_corruption"]["brightness"]["per_severity"]
    assert brightness_accuracy == pytest.approx([2 / 3] + [1 / 3] * 4, abs=1e-6)
    assert result.detail["per_corruption"]["contrast"]["per_severity"] == [1.0] * 5
    assert result.value == pytest.approx((2 / 3 + 4 / 3 + 5) / 10)
    assert result.detail["clean_accuracy"] == 1.0


def test_metric_does_not_depend_on_batching_and_keeps_the_model_out_of_its_state():
    model = brightness_model()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.35
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    counts = []
    for batches in ([[0, 1, 2, 3, 4, 5]], [[0, 1], [2, 3, 4], [5]]):
        metric = CorruptionAccuracy(model, seed=3, corruptions=sorted(RANDOM_CORRUPTIONS))
        run(metric, model, images, labels, batches)
        counts.append(metric.correct.clone())
    assert torch.equal(counts[0], counts[1])  # every resample's copy too
    # the images sit near the threshold: corruption flips some, so the counts depend on the draws
    assert 0 < counts[0][0].sum() < counts[0][0].numel() * 6
    assert list(metric.children()) == [] and set(metric.state_dict()) <= {"correct", "clean", "total"}
    with pytest.raises(ValueError, match="unknown corruptions"):
        CorruptionAccuracy(model, corruptions=["snow"])


def test_metric_has_a_bootstrap_interval_that_does_not_depend_on_batching():
    model = brightness_model()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.35
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    context = EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu"), seed=3)
    results = []
    for batches in ([[0, 1, 2, 3, 4, 5, 6, 7]], [[6, 1], [2, 0, 4], [5, 3, 7]]):
        metric = CORRUPTION_ACCURACY.compute(model, context)
        assert metric.seed == 3
        run(metric, model, images, labels, batches)
        results.append(metric.compute())
    whole, split = results
    assert 0 < whole.value < 1 and 0 < whole.detail["clean_accuracy"] < 1
    low, high = whole.interval
    assert low <= whole.value <= high and low < high
    # each image's share of correct (corruption, severity) pairs, corrupted here with its own generators
    index = torch.arange(8)
    generators = lambda name, s: image_generators(3, name, s, index) if name in RANDOM_CORRUPTIONS else None
    hits = torch.stack([model(CORRUPTIONS[name](images, s, generators(name, s))).argmax(dim=1) == labels
                        for name in CORRUPTIONS for s in SEVERITIES], dim=1).double().mean(dim=1)
    assert whole.value == pytest.approx(float(hits.mean()), abs=1e-12)
    assert whole.interval == pytest.approx(bootstrap_interval(index, hits, torch.ones(8), seed=3), abs=1e-12)
    assert split.value == whole.value and split.interval == whole.interval
