"""Consistency and stability (Huang et al., ICCV 2023) on handcrafted models and batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.metrics.consistency import CONSISTENCY
from protobench.metrics.part_vectors import counted_pairs, part_vectors
from protobench.metrics.stability import NOISE_CLIP, NORMALISATION_STD, STABILITY, noise
from protobench.runner import harness

SIZE = 32  # px; the region's half size is round(36 * 32 / 224) = 5
HALF = 5
PARTS = ["beak", "wing", "tail"]


class MapModel(PrototypeModel):
    """A prototype model whose similarity maps (at image size) are ``maps(images)``."""

    def __init__(self, classes: list[int], maps: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.register_buffer("prototype_classes", torch.tensor(classes))
        self.num_classes = max(max(classes) + 1, 1)
        self.input_size = (SIZE, SIZE)
        self.config = {}
        self.maps = maps

    def explain(self, x: torch.Tensor) -> Explanation:
        return Explanation(logits=x.new_zeros(len(x), self.num_classes), similarities=self.maps(x))


def channel(c: int, prototypes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Every prototype's map is image channel ``c``."""
    return lambda x: x[:, c : c + 1].expand(-1, prototypes, -1, -1)


def batch(images, labels, keypoints) -> dict:
    images = torch.as_tensor(images, dtype=torch.float32)
    return {"image": images, "label": torch.as_tensor(labels), "index": torch.arange(len(images)),
            "keypoints": torch.as_tensor(keypoints, dtype=torch.float32)}


def marked(points_per_channel: list[list[tuple[int, int]]]) -> torch.Tensor:
    """Images [N, 3, SIZE, SIZE], zero but 1.0 at (x, y) = points_per_channel[c][n] in channel c."""
    n = len(points_per_channel[0])
    images = torch.zeros(n, 3, SIZE, SIZE)
    for c, points in enumerate(points_per_channel):
        for i, (x, y) in enumerate(points):
            images[i, c, y, x] = 1.0
    return images


def run(spec, model: PrototypeModel, batches: list[dict], seed: int = 0):
    context = EvalContext(dataset=SimpleNamespace(part_names=PARTS), device=torch.device("cpu"), seed=seed)
    metric = spec.compute(model, context)
    for b in batches:
        with torch.no_grad():
            metric.update(b, model.explain(b["image"]))
    return metric.compute(), metric


# -- part vectors -------------------------------------------------------------------------------------------

def test_part_vectors_hold_the_visible_keypoints_inside_the_box_edges_included():
    boxes = torch.tensor([[[10, 10, 20, 20], [0, 0, 5, 5]]])
    keypoints = torch.tensor([[[10.0, 20.9, 1], [20.5, 15, 1], [21.0, 15, 1], [12, 12, 0], [5.99, 0, 1]]])
    assert part_vectors(boxes, keypoints).tolist() == [[[True, True, False, False, False],
                                                        [False, False, False, False, True]]]


def test_counted_pairs_are_own_class_and_class_agnostic_prototypes():
    pairs = counted_pairs(torch.tensor([1, 0]), torch.tensor([0, 1, -1, 1]), None)
    assert pairs.tolist() == [[0, 1], [0, 2], [0, 3], [1, 0], [1, 2]]


def test_a_class_agnostic_prototype_counts_where_it_argues_for_the_image_class():
    # Prototypes 1 and 2 are class-agnostic. Image 0 (class 1): prototype 1 adds +0.5 to class 1, prototype 2
    # adds to class 0 only. Image 1 (class 0): prototype 1 subtracts from class 0, prototype 2 gives exactly 0.
    contributions = torch.tensor([[[0.0, 0.0], [0.0, 0.5], [0.9, -0.1]],
                                  [[0.0, 0.0], [-0.3, 0.2], [0.0, 0.0]]])
    pairs = counted_pairs(torch.tensor([1, 0]), torch.tensor([0, -1, -1]), contributions)
    assert pairs.tolist() == [[0, 1], [1, 0]]


# -- consistency --------------------------------------------------------------------------------------------

def test_prototypes_that_always_fire_on_the_beak_are_all_consistent():
    g = torch.Generator().manual_seed(0)
    n = 12
    beak = torch.randint(0, SIZE, (n, 2), generator=g)
    others = (beak + SIZE // 2) % SIZE  # wing and tail at least 16 px away on both axes
    keypoints = torch.stack([torch.cat([beak, torch.ones(n, 1, dtype=torch.long)], 1),
                             torch.cat([others, torch.ones(n, 1, dtype=torch.long)], 1),
                             torch.cat([(others + 3) % SIZE, torch.ones(n, 1, dtype=torch.long)], 1)], 1)
    fire = (beak + torch.randint(-3, 4, (n, 2), generator=g)).clamp(0, SIZE - 1)  # within the region
    images = marked([[tuple(p) for p in fire.tolist()]])
    model = MapModel([0, 0, 1, 1, -1], channel(0, 5))
    result, _ = run(CONSISTENCY, model, [batch(images, torch.arange(n) % 3, keypoints)])
    assert result.value == 1.0
    per = result.detail["per_prototype"]
    assert per["part"] == ["beak"] * 5 and per["max_part_frequency"] == [1.0] * 5
    assert per["images"] == [4, 4, 4, 4, 12]


def test_threshold_mu_is_inclusive():
    # class 0: fires on the beak in 4 of 5 images (0.8, consistent); class 1: in 3 of 4 (0.75, not).
    beak, far = (5, 5), (26, 26)
    fire = [beak] * 4 + [far] + [beak] * 3 + [far]
    keypoints = [[[5, 5, 1], [16, 16, 1], [20, 3, 1]]] * 9
    images = marked([fire])
    result, _ = run(CONSISTENCY, MapModel([0, 1], channel(0, 2)), [batch(images, [0] * 5 + [1] * 4, keypoints)])
    assert result.detail["per_prototype"]["max_part_frequency"] == [0.8, 0.75]
    assert result.detail["per_prototype"]["consistent"] == [True, False]
    assert result.value == 0.5


def test_invisible_keypoints_are_neither_hits_nor_present():
    # The prototype fires on the beak's location in all 5 images; the beak is visible in 3 of them, the wing
    # (inside the region too) in none, the tail (far away) in all.
    keypoints = [[[8, 8, 1], [10, 9, 0], [28, 28, 1]]] * 3 + [[[8, 8, 0], [10, 9, 0], [28, 28, 1]]] * 2
    images = marked([[(8, 8)] * 5])
    result, metric = run(CONSISTENCY, MapModel([0], channel(0, 1)), [batch(images, [0] * 5, keypoints)])
    assert metric.hits[0].tolist() == [[3, 0, 0]]
    assert metric.present[0].tolist() == [[3, 0, 5]]
    assert result.detail["per_prototype"]["max_part_frequency"] == [1.0]  # 3 / 3, not 3 / 5
    assert result.value == 1.0


def test_class_agnostic_prototypes_count_every_test_image_without_contributions():
    # Class 0 images are marked at the beak, class 1 images at the tail; prototype 0 (class 0) sees only the
    # beak images, prototype 1 (class -1) all four: beak 2/4, tail 2/4.
    keypoints = [[[5, 5, 1], [16, 16, 1], [27, 27, 1]]] * 4
    images = marked([[(5, 5), (5, 5), (27, 27), (27, 27)]])
    result, _ = run(CONSISTENCY, MapModel([0, -1], channel(0, 2)), [batch(images, [0, 0, 1, 1], keypoints)])
    per = result.detail["per_prototype"]
    assert per["images"] == [2, 4]
    assert per["max_part_frequency"] == [1.0, 0.5]
    assert per["consistent"] == [True, False]
    assert result.value == 0.5


def test_class_agnostic_prototypes_count_the_images_they_argue_for():
    # The same data as above, but prototype 1 argues for class 0 only (as a ProtoTree node on class 0's path):
    # it counts on the two beak images and is consistent.
    keypoints = [[[5, 5, 1], [16, 16, 1], [27, 27, 1]]] * 4
    images = marked([[(5, 5), (5, 5), (27, 27), (27, 27)]])
    model = MapModel([0, -1], channel(0, 2))
    plain = model.explain

    def explain(x: torch.Tensor) -> Explanation:
        contributions = torch.zeros(len(x), 2, 2)
        contributions[:, 1, 0] = 1.0
        return dataclasses.replace(plain(x), contributions=contributions)

    model.explain = explain
    result, _ = run(CONSISTENCY, model, [batch(images, [0, 0, 1, 1], keypoints)])
    per = result.detail["per_prototype"]
    assert per["images"] == [2, 2]
    assert per["consistent"] == [True, True]
    assert result.value == 1.0


def random_data(n: int = 30, seed: int = 0):
    """Random images and keypoints; channel 0 peaks at the beak on about 85% of images."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g)
    images[:, 0] *= 0.5
    keypoints = torch.cat([torch.randint(0, SIZE, (n, len(PARTS), 2), generator=g).float(),
                           (torch.rand(n, len(PARTS), 1, generator=g) < 0.8).float()], dim=2)
    on_beak = torch.rand(n, generator=g) < 0.85
    for i in range(n):
        x, y = keypoints[i, 0, :2].long().tolist() if on_beak[i] else torch.randint(0, SIZE, (2,), generator=g).tolist()
        images[i, 0, y, x] = 1.0
    labels = torch.randint(0, 3, (n,), generator=g)
    return images, labels, keypoints


def random_model() -> MapModel:
    mixing = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.5, 0.5, 0], [0, 0, 1], [1, 0, 0], [0.3, 0.1, 0.6], [0.9, 0.1, 0]])
    return MapModel([0, 0, 1, 1, 2, 2, -1], lambda x: torch.einsum("pc,bchw->bphw", mixing, x))


def reference_part_vectors(model: MapModel, images: torch.Tensor, keypoints: torch.Tensor) -> dict:
    """{(image, prototype): tuple of 0/1 per part}, by the official code's loops (np.argmax of each map)."""
    maps = model.explain(images).similarities.numpy()
    vectors = {}
    for i in range(len(images)):
        for p in range(maps.shape[1]):
            y, x = divmod(int(np.argmax(maps[i, p])), SIZE)
            y0, y1, x0, x1 = max(0, y - HALF), min(SIZE, y + HALF), max(0, x - HALF), min(SIZE, x + HALF)
            vectors[i, p] = tuple(int(v == 1 and y0 <= int(ky) <= y1 and x0 <= int(kx) <= x1)
                                  for kx, ky, v in keypoints[i].tolist())
    return vectors


def counted(model: MapModel, labels: torch.Tensor, p: int) -> list[int]:
    c = int(model.prototype_classes[p])
    return [i for i in range(len(labels)) if c in (-1, int(labels[i]))]


def test_random_maps_score_what_the_official_loops_compute():
    images, labels, keypoints = random_data()
    model = random_model()
    vectors = reference_part_vectors(model, images, keypoints)
    expected_best, expected_part = [], []
    for p in range(model.num_prototypes):
        hits, present = [0] * len(PARTS), [0] * len(PARTS)
        for i in counted(model, labels, p):
            for k in range(len(PARTS)):
                hits[k] += vectors[i, p][k]
                present[k] += int(keypoints[i, k, 2] == 1)
        frequency = [h / (n if n else 1) for h, n in zip(hits, present)]
        expected_best.append(max(frequency))
        expected_part.append(PARTS[frequency.index(max(frequency))])
    expected = float(np.mean([b >= 0.8 for b in expected_best]))

    result, _ = run(CONSISTENCY, model, [batch(images, labels, keypoints)])
    per = result.detail["per_prototype"]
    assert per["max_part_frequency"] == pytest.approx(expected_best)
    assert per["part"] == expected_part
    assert result.value == pytest.approx(expected)
    assert 0 < result.value < 1  # some prototypes consistent, some not: the case is not trivial


# -- stability ----------------------------------------------------------------------------------------------

def test_noise_is_the_official_clipped_gaussian_in_normalised_space_and_keyed_by_image():
    delta = noise(torch.tensor([3, 7, 3]), (3, 64, 64), seed=5)
    bound = torch.tensor(NORMALISATION_STD)[:, None, None] * NOISE_CLIP
    assert (delta.abs() <= bound + 1e-7).all()
    normalised = delta / torch.tensor(NORMALISATION_STD)[:, None, None]
    assert normalised.std().item() == pytest.approx(0.2 * 0.8138, abs=0.005)  # N(0, 0.2) clipped at 1.25 sigma
    assert (normalised.abs() > 0.2499).float().mean().item() == pytest.approx(0.211, abs=0.01)
    assert torch.equal(delta[0], delta[2]) and not torch.equal(delta[0], delta[1])
    assert torch.equal(noise(torch.tensor([7]), (3, 64, 64), seed=5)[0], delta[1])
    assert not torch.equal(noise(torch.tensor([7]), (3, 64, 64), seed=6)[0], delta[1])


def fragile_model(prototypes: list[int]) -> MapModel:
    """Fires on the channel-0 marker; on images flagged fragile (channel 2 == 0.5) it jumps to the channel-1
    marker as soon as the input is perturbed (channel 2 leaves {0, 0.5})."""

    def maps(x: torch.Tensor) -> torch.Tensor:
        flag = x[:, 2]
        moved = ((flag - 0.5).abs().mean(dim=(1, 2)) < 0.2) & ((flag != 0) & (flag != 0.5)).flatten(1).any(1)
        chosen = torch.where(moved[:, None, None], x[:, 1], (x[:, 0] > 0.5).float())
        return chosen[:, None].expand(-1, len(prototypes), -1, -1)

    return MapModel(prototypes, maps)


def stability_batch(fragile: list[bool], labels: list[int], invisible: set[int] = frozenset()) -> dict:
    n = len(fragile)
    images = marked([[(5, 5)] * n, [(26, 26)] * n])
    images[:, 2] = torch.tensor([0.5 if f else 0.0 for f in fragile])[:, None, None]
    keypoints = [[[5, 5, int(i not in invisible)], [16, 16, int(i not in invisible)],
                  [26, 26, int(i not in invisible)]] for i in range(n)]
    return batch(images, labels, keypoints)


def test_a_model_that_ignores_the_noise_is_fully_stable():
    result, _ = run(STABILITY, fragile_model([0, 1, -1]), [stability_batch([False] * 6, [0, 0, 0, 0, 1, 1])])
    assert result.value == 1.0
    assert result.detail["per_prototype"]["stability"] == [1.0, 1.0, 1.0]


def test_a_model_whose_map_moves_under_noise_scores_the_fraction_of_unchanged_part_vectors():
    # Class 0: 4 images, 1 fragile -> 3/4. Class 1: 2 fragile images, one without visible parts, whose part
    # vector stays empty -> 1/2. Class-agnostic prototype: all 6 images, 2 change -> 4/6.
    b = stability_batch([True, False, False, False, True, True], [0, 0, 0, 0, 1, 1], invisible={5})
    result, _ = run(STABILITY, fragile_model([0, 1, -1]), [b])
    per = result.detail["per_prototype"]
    assert per["stability"] == pytest.approx([0.75, 0.5, 4 / 6], abs=1e-6)
    assert per["images"] == [4, 2, 6]
    assert result.value == pytest.approx((0.75 + 0.5 + 4 / 6) / 3)


def test_prototypes_without_images_are_left_out_of_the_stability_mean():
    result, _ = run(STABILITY, fragile_model([0, 1]), [stability_batch([True, False], [0, 0])])
    assert result.detail["per_prototype"]["stability"] == [0.5, None]
    assert result.value == 0.5


def test_stability_without_any_counted_image_is_none_with_its_reason():
    result, _ = run(STABILITY, fragile_model([1]), [stability_batch([True, False], [0, 0])])
    assert result.value is None and result.detail["reason"] == "no test image counts for any prototype"


def test_random_maps_stability_matches_the_official_loops():
    images, labels, keypoints = random_data(seed=1)
    model = random_model()
    perturbed = images + noise(torch.arange(len(images)), (3, SIZE, SIZE), seed=3)
    clean_vectors = reference_part_vectors(model, images, keypoints)
    noisy_vectors = reference_part_vectors(model, perturbed, keypoints)
    expected = [np.mean([clean_vectors[i, p] == noisy_vectors[i, p] for i in counted(model, labels, p)])
                for p in range(model.num_prototypes)]
    result, _ = run(STABILITY, model, [batch(images, labels, keypoints)], seed=3)
    assert result.detail["per_prototype"]["stability"] == pytest.approx(expected, abs=1e-6)
    assert result.value == pytest.approx(np.mean(expected))
    assert 0 < result.value < 1


def test_stability_interval_brackets_the_value_and_does_not_depend_on_batching():
    # The Poisson bootstrap (protobench.metrics.resampled) keys each image's counts by its dataset index, so the
    # same images fed whole, or shuffled across uneven batches, give the same value and the same interval.
    images, labels, keypoints = random_data(n=24, seed=1)
    model = random_model()

    def fed(order: list[int], sizes: list[int]) -> list[dict]:
        order, out, start = torch.tensor(order), [], 0
        for size in sizes:
            i = order[start:start + size]
            start += size
            out.append({"image": images[i], "label": labels[i], "index": i, "keypoints": keypoints[i]})
        return out

    whole, _ = run(STABILITY, model, fed(list(range(24)), [24]), seed=3)
    shuffled = torch.randperm(24, generator=torch.Generator().manual_seed(0)).tolist()
    pieces, _ = run(STABILITY, model, fed(shuffled, [5, 1, 11, 7]), seed=3)
    assert 0 < whole.value < 1
    low, high = whole.interval
    assert low <= whole.value <= high and low < high
    assert pieces.value == whole.value and pieces.interval == whole.interval
    assert pieces.detail == whole.detail


# -- streaming ----------------------------------------------------------------------------------------------

class ItemDataset(torch.utils.data.Dataset):
    part_names = PARTS
    num_classes = 3

    def __init__(self, images, labels, keypoints):
        self.images, self.labels, self.keypoints = images, labels, keypoints

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i]), "index": i, "keypoints": self.keypoints[i]}


def test_one_batch_or_many_through_the_harness_give_the_same_results():
    dataset = ItemDataset(*random_data(n=23, seed=2))
    model = random_model()

    def evaluate(batch_size: int) -> dict:
        settings = harness.Settings(batch_size=batch_size, seed=4)
        out = harness._shared_pass(model, "fake", dataset, [CONSISTENCY, STABILITY], settings,
                                   torch.device("cpu"), 0, 1, None, lambda it, desc="", total=None: it)
        return {spec.name: (result.value, result.detail) for spec, result, _ in out}

    whole = evaluate(64)
    assert evaluate(5) == whole
    assert evaluate(1) == whole
    assert 0 < whole["stability"][0] < 1
