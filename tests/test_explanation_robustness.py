"""Explanation robustness on handcrafted models: reference loops for the noise metrics, a closed-form
threshold for Hoffmann et al.'s attack."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.explain.regions import half_size
from protobench.metrics.adversarial import EPSILONS
from protobench.metrics.explanation_robustness import (
    EXPLANATION_ROBUSTNESS_METRICS,
    HOFFMANN_METRICS,
    PART_VECTOR_ROBUSTNESS,
    TOP_PROTOTYPE_STABILITY,
    noisy,
    region_cells,
)

SIZE = 16
PARTS = ["beak", "wing", "tail"]


class MapModel(PrototypeModel):
    """Similarity maps ``maps(x)`` and logits ``logits(x)``, both given as functions of the images."""

    def __init__(self, classes: list[int], num_classes: int, maps: Callable, logits: Callable):
        super().__init__()
        self.register_buffer("prototype_classes", torch.tensor(classes))
        self.num_classes, self.input_size, self.config = num_classes, (SIZE, SIZE), {}
        self.maps, self.logits = maps, logits

    def explain(self, x: torch.Tensor) -> Explanation:
        return Explanation(logits=self.logits(x), similarities=self.maps(x))


def threshold_logits(channel: int, level: float) -> Callable:
    """Two classes: class 0 when the mean of ``channel`` exceeds ``level``."""
    return lambda x: torch.stack([x[:, channel].mean(dim=(1, 2)) - level, torch.zeros(len(x))], dim=1)


def run(spec, model: PrototypeModel, batches: list[dict], seed: int = 0):
    context = EvalContext(dataset=SimpleNamespace(part_names=PARTS), device=torch.device("cpu"), seed=seed)
    metric = spec.compute(model, context)
    for b in batches:
        with torch.no_grad():
            metric.update(b, model.explain(b["image"]))
    return metric.compute()


def split(images, labels, keypoints=None) -> list[dict]:
    """Two batches of the data (indices = positions), so that per-image seeding across batches is exercised."""
    half = len(images) // 2
    batches = []
    for part in (slice(0, half), slice(half, None)):
        b = {"image": images[part], "label": labels[part], "index": torch.arange(len(images))[part]}
        if keypoints is not None:
            b["keypoints"] = keypoints[part]
        batches.append(b)
    return batches


def near_ties(n: int, seed: int):
    """Images whose channels 0 and 1 peak at two places with nearly equal heights, and whose channel-2 mean
    sits at 0.45 give or take less than the noise can move it on some images."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.5
    places = torch.randint(0, SIZE, (n, 2, 2), generator=g)
    gaps = torch.rand(n, generator=g) * 0.08
    for i in range(n):
        (y0, x0), (y1, x1) = places[i].tolist()
        images[i, 0, y0, x0] = 0.8
        images[i, 1, y1, x1] = 0.8 - gaps[i]
        images[i, 0, y1, x1] = 0.8 - gaps[i]  # channel 0's second peak, for the part vectors
    images[:, 2] = 0.45 + (torch.rand(n, generator=g)[:, None, None] - 0.5) * 0.01
    return images


# -- top prototype under noise ---------------------------------------------------------------------------------

def test_top_prototype_stability_equals_a_per_image_reference_over_kept_predictions():
    n = 40
    images = near_ties(n, seed=0)
    model = MapModel([0, 1, 0], 2, lambda x: x[:, [0, 1, 2]] * x.new_tensor([1.0, 1.0, 0.5])[:, None, None],
                     threshold_logits(2, 0.45))
    labels = torch.zeros(n, dtype=torch.long)
    kept = unchanged = 0
    for i in range(n):  # the reference: one image at a time
        clean, perturbed = model.explain(images[i:i + 1]), model.explain(noisy(images[i:i + 1], torch.tensor([i]), 3))
        if clean.logits.argmax() == perturbed.logits.argmax():
            kept += 1
            top = [int(e.similarities[0].flatten(1).max(dim=1).values.argmax()) for e in (clean, perturbed)]
            unchanged += top[0] == top[1]
    result = run(TOP_PROTOTYPE_STABILITY, model, split(images, labels), seed=3)
    assert result.detail["kept_prediction"] == kept and result.detail["top_prototype_unchanged"] == unchanged
    assert result.value == unchanged / kept
    assert 0 < kept < n and 0 < unchanged < kept  # noise flips some predictions and some top prototypes


def test_clear_winners_keep_their_top_prototype_and_noise_stays_in_the_ball():
    images = torch.full((6, 3, SIZE, SIZE), 0.3)
    images[:, 1, 4, 4] = 0.9
    model = MapModel([0, 1, 0], 2, lambda x: x, lambda x: x.new_zeros(len(x), 2))
    result = run(TOP_PROTOTYPE_STABILITY, model, split(images, torch.zeros(6, dtype=torch.long)))
    assert result.value == 1.0 and result.detail["kept_prediction"] == 6
    delta = noisy(images, torch.arange(6), 0) - images
    assert delta.abs().max() <= 8 / 255 + 1e-7 and delta.abs().max() > 7 / 255


# -- part vectors under noise ----------------------------------------------------------------------------------

def reference_part_vector(map_: np.ndarray, keypoints: np.ndarray) -> tuple:
    """EvalProtoPNet's loop: first maximum, box of the half size, visible keypoints inside (ends inclusive)."""
    y, x = divmod(int(np.argmax(map_)), SIZE)
    half_y, half_x = half_size((SIZE, SIZE))
    y0, y1, x0, x1 = max(0, y - half_y), min(SIZE, y + half_y), max(0, x - half_x), min(SIZE, x + half_x)
    return tuple(int(v == 1 and y0 <= int(ky) <= y1 and x0 <= int(kx) <= x1) for kx, ky, v in keypoints)


def test_part_vector_robustness_equals_a_per_image_reference_over_kept_predictions():
    n = 40
    images = near_ties(n, seed=1)
    g = torch.Generator().manual_seed(2)
    keypoints = torch.cat([torch.randint(0, SIZE, (n, len(PARTS), 2), generator=g).float(),
                           (torch.rand(n, len(PARTS), 1, generator=g) < 0.8).float()], dim=2)
    labels = torch.randint(0, 2, (n,), generator=g)
    classes = [0, 1, -1]
    model = MapModel(classes, 2, lambda x: x[:, [0, 0, 1]], threshold_logits(2, 0.45))
    unchanged = counted = kept_images = 0
    for i in range(n):
        clean, perturbed = model.explain(images[i:i + 1]), model.explain(noisy(images[i:i + 1], torch.tensor([i]), 5))
        if clean.logits.argmax() != perturbed.logits.argmax():
            continue
        kept_images += 1
        for p, c in enumerate(classes):
            if c in (-1, int(labels[i])):
                before, after = (reference_part_vector(e.similarities[0, p].numpy(), keypoints[i].numpy())
                                 for e in (clean, perturbed))
                counted += 1
                unchanged += before == after
    result = run(PART_VECTOR_ROBUSTNESS, model, split(images, labels, keypoints), seed=5)
    assert result.detail["kept_prediction"] == kept_images and result.detail["pairs"] == counted
    assert result.value == unchanged / counted
    assert kept_images < n and 0 < unchanged < counted


# -- Hoffmann et al.'s attack ----------------------------------------------------------------------------------

GRID = 4  # latent cells of 4 x 4 pixels


def pooled(x: torch.Tensor) -> torch.Tensor:
    """One prototype whose similarity map is channel 0 average-pooled to the 4 x 4 grid (linear in x)."""
    return F.avg_pool2d(x[:, :1], SIZE // GRID)


def two_peaks(gaps: list[float]) -> torch.Tensor:
    """Channel 0 is 0.6 on the top-left cell, 0.6 - gap on the bottom-right one, 0.3 elsewhere."""
    images = torch.full((len(gaps), 3, SIZE, SIZE), 0.3)
    images[:, 0, :4, :4] = 0.6
    for i, gap in enumerate(gaps):
        images[i, 0, 12:, 12:] = 0.6 - gap
    return images


GAPS = [0.004, 0.012, 0.02, 0.028, 0.045, 0.055, 0.07]


def test_region_cells_are_the_cells_any_pixel_of_the_box_falls_in():
    boxes = torch.tensor([[0, 0, 5, 5], [12, 3, 16, 3]])
    cells = region_cells(boxes, (SIZE, SIZE), (GRID, GRID))
    assert cells[0].nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert cells[1].nonzero().tolist() == [[0, 3]]


def test_hoffmann_attack_moves_the_peak_exactly_when_twice_eps_exceeds_the_gap():
    # The similarity is linear in the pixels, so the attack's optimum raises every pixel outside the region
    # by eps and lowers every pixel inside by eps: the far peak overtakes the region's iff 2 eps > gap.
    model = MapModel([0], 2, pooled, lambda x: x.new_tensor([1.0, 0.0]).expand(len(x), 2))
    images, labels = two_peaks(GAPS), torch.zeros(len(GAPS), dtype=torch.long)
    for spec, eps in zip(HOFFMANN_METRICS, EPSILONS):
        result = run(spec, model, split(images, labels))
        expected = sum(2 * eps > gap for gap in GAPS)
        assert result.value == expected / len(GAPS), spec.name
        assert result.detail["attacked_images"] == len(GAPS) and result.detail["rejected_class_changed"] == 0
    assert [spec.name for spec in HOFFMANN_METRICS] == ["hoffmann_eps1", "hoffmann_eps2", "hoffmann_eps4", "hoffmann_eps8"]


def test_a_relocation_that_changes_the_class_is_rejected():
    # Class 0 when channel 0's mean exceeds that of every clean image by 0.001: the attack raises that mean by
    # eps * (outside area - inside area) / area = eps / 2, so every relocation also changes the class.
    images = two_peaks(GAPS)
    level = float(images[0, 0].mean()) + 0.001
    model = MapModel([0], 2, pooled, lambda x: torch.stack([torch.zeros(len(x)), level - x[:, 0].mean(dim=(1, 2))], 1))
    result = run(HOFFMANN_METRICS[-1], model, split(images, torch.ones(len(GAPS), dtype=torch.long)))
    moved = sum(2 * 8 / 255 > gap for gap in GAPS)
    assert result.value == 0.0 and result.detail["rejected_class_changed"] == moved


def test_the_next_most_activated_prototype_is_tried_when_the_first_does_not_move():
    fixed = torch.zeros(1, 1, GRID, GRID)
    fixed[..., 0, 0] = 2.0  # the most activated prototype, and its map ignores the image

    def maps(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([fixed.expand(len(x), -1, -1, -1), pooled(x)], dim=1)

    model = MapModel([0, 1], 2, maps, lambda x: x.new_tensor([1.0, 0.0]).expand(len(x), 2))
    images = two_peaks(GAPS)
    result = run(HOFFMANN_METRICS[-1], model, split(images, torch.zeros(len(GAPS), dtype=torch.long)))
    moved = sum(2 * 8 / 255 > gap for gap in GAPS)
    assert result.detail["succeeded_at_rank"] == [0, moved] and result.value == moved / len(GAPS)


def test_misclassified_images_are_not_attacked_and_specs_need_prototypes():
    model = MapModel([0], 2, pooled, lambda x: x.new_tensor([1.0, 0.0]).expand(len(x), 2))
    images = two_peaks(GAPS)
    result = run(HOFFMANN_METRICS[0], model, split(images, torch.ones(len(GAPS), dtype=torch.long)))
    assert result.value is None and result.detail["attacked_images"] == 0
    needs = {spec.name: spec.needs for spec in EXPLANATION_ROBUSTNESS_METRICS}
    assert needs["part_vector_robustness"] == {"prototypes", "keypoints"}
    assert all(needs[name] == {"prototypes"} for name in needs if name != "part_vector_robustness")


@pytest.mark.parametrize("spec", [TOP_PROTOTYPE_STABILITY, PART_VECTOR_ROBUSTNESS])
def test_noise_metrics_do_not_depend_on_batching(spec):
    images = near_ties(12, seed=4)
    keypoints = torch.cat([torch.randint(0, SIZE, (12, 3, 2)).float(), torch.ones(12, 3, 1)], dim=2)
    labels = torch.arange(12) % 2
    model = MapModel([0, 1, -1], 2, lambda x: x, threshold_logits(2, 0.45))
    whole = run(spec, model, [{"image": images, "label": labels, "index": torch.arange(12), "keypoints": keypoints}])
    assert whole.value == run(spec, model, split(images, labels, keypoints)).value


@pytest.mark.parametrize("name", ["top_prototype_stability", "part_vector_robustness", "hoffmann_eps8"])
def test_interval_brackets_the_value_and_does_not_depend_on_batching(name):
    # The Poisson bootstrap (protobench.metrics.resampled) keys each image's counts by its dataset index, so the
    # same images fed whole, or shuffled across uneven batches, give the same value and the same interval.
    # The cases are those of the reference tests above, where the values are strictly between 0 and 1.
    spec = {s.name: s for s in EXPLANATION_ROBUSTNESS_METRICS}[name]
    keypoints = None
    if name == "top_prototype_stability":
        images, seed = near_ties(40, seed=0), 3
        labels = torch.zeros(40, dtype=torch.long)
        model = MapModel([0, 1, 0], 2, lambda x: x[:, [0, 1, 2]] * x.new_tensor([1.0, 1.0, 0.5])[:, None, None],
                         threshold_logits(2, 0.45))
    elif name == "part_vector_robustness":
        images, seed = near_ties(40, seed=1), 5
        g = torch.Generator().manual_seed(2)
        keypoints = torch.cat([torch.randint(0, SIZE, (40, len(PARTS), 2), generator=g).float(),
                               (torch.rand(40, len(PARTS), 1, generator=g) < 0.8).float()], dim=2)
        labels = torch.randint(0, 2, (40,), generator=g)
        model = MapModel([0, 1, -1], 2, lambda x: x[:, [0, 0, 1]], threshold_logits(2, 0.45))
    else:
        # every other image misclassified (label 1), so the attacked images are not the batch's first rows
        images, seed = two_peaks([g for gap in GAPS for g in (gap, 0.1)]), 0
        labels = torch.tensor([0, 1] * len(GAPS))
        model = MapModel([0], 2, pooled, lambda x: x.new_tensor([1.0, 0.0]).expand(len(x), 2))
    n = len(images)

    def fed(order: list[int], sizes: list[int]) -> list[dict]:
        order, out, start = torch.tensor(order), [], 0
        for size in sizes:
            i = order[start:start + size]
            start += size
            b = {"image": images[i], "label": labels[i], "index": i}
            if keypoints is not None:
                b["keypoints"] = keypoints[i]
            out.append(b)
        return out

    whole = run(spec, model, fed(list(range(n)), [n]), seed=seed)
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(3)).tolist()
    pieces = run(spec, model, fed(shuffled, [5, 1, n - 9, 3]), seed=seed)
    assert 0 < whole.value < 1
    low, high = whole.interval
    assert low <= whole.value <= high and low < high
    assert pieces.value == whole.value and pieces.interval == whole.interval
    assert pieces.detail == whole.detail
