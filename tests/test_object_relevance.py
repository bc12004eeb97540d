"""Object relevance on handcrafted models, masks and boxes; agreement with quantus's localisation metrics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.metrics.object_relevance import (
    OBJECT_RELEVANCE,
    mass_inside,
    object_masks,
    pointing_hits,
    top_area_inside,
)

SIZE = 32  # px; regions are 11 x 11 (half size round(36 * 32 / 224) = 5)


class RegionModel(PrototypeModel):
    """Prototypes with fixed region centres (y, x), classes and contributions; constant logits."""

    def __init__(self, centres: list[tuple[int, int]], classes: list[int], contributions: list[float],
                 logits: list[float]):
        super().__init__()
        self.num_classes, self.input_size, self.config = len(logits), (SIZE, SIZE), {}
        self.register_buffer("prototype_classes", torch.tensor(classes))
        self.centres, self.logits = centres, torch.tensor(logits)
        self.weights = torch.zeros(len(classes), len(logits))
        own = torch.tensor(classes).clamp(min=0)
        self.weights[torch.arange(len(classes)), own] = torch.tensor(contributions)

    def explain(self, x: torch.Tensor) -> Explanation:
        maps = torch.zeros(len(x), len(self.centres), SIZE, SIZE)
        for p, (y, cx) in enumerate(self.centres):
            maps[:, p, y, cx] = 1.0
        return Explanation(logits=self.logits.expand(len(x), -1), similarities=maps,
                           contributions=self.weights.expand(len(x), -1, -1))


class BlackBox(PrototypeModel):
    """No prototypes; class 0's logit is the sum of channel 0 over rows 0..7, columns 0..7."""

    def __init__(self):
        super().__init__()
        self.num_classes, self.input_size, self.config = 2, (SIZE, SIZE), {}
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))

    def explain(self, x: torch.Tensor) -> Explanation:
        inside = x[:, 0, :8, :8].sum(dim=(1, 2))
        return Explanation(logits=torch.stack([inside, -inside], dim=1),
                           similarities=x.new_zeros(len(x), 0, 1, 1))


def run(model: PrototypeModel, batch: dict, dataset=None):
    context = EvalContext(dataset=dataset or SimpleNamespace(), device=torch.device("cpu"))
    metric = OBJECT_RELEVANCE.compute(model, context)
    with torch.no_grad():
        metric.update(batch, model.explain(batch["image"]))
    return metric.compute()


def left_half_batch(n: int = 2, labels=None) -> dict:
    """Images whose bounding box (x, y, w, h) is the left half, columns 0..15."""
    return {"image": torch.rand(n, 3, SIZE, SIZE), "label": torch.as_tensor(labels or [0] * n),
            "index": torch.arange(n), "bbox": torch.tensor([[0.0, 0.0, 16.0, 32.0]] * n)}


def test_region_shares_from_the_bounding_box_follow_by_hand():
    # Regions (11 x 11): around column 5 (all inside columns 0..15), column 15 (columns 10..20: 6 of 11
    # inside), column 27 (none inside). Prototype 3 belongs to class 1: no image of class 0 counts for it.
    centres = [(16, 5), (16, 15), (16, 27), (16, 5)]
    model = RegionModel(centres, [0, 0, 0, 1], [1.0, 2.0, 4.0, 1.0], [1.0, 0.0])
    result = run(model, left_half_batch())
    per = result.detail["per_prototype"]
    assert per["region_in_object"][:3] == pytest.approx([1.0, 6 / 11, 0.0])
    assert per["region_in_object"][3] is None
    assert per["images"] == [2, 2, 2, 0]
    assert result.detail["region_in_object"] == pytest.approx((1 + 6 / 11) / 3)
    assert result.detail["top_prototype_region_in_object"] == 0.0  # prototype 2 contributes most: outside
    # attribution = 1 * box0 + 2 * box1 + 4 * box2 (columns 22..31: 110 px): 121 + 2 * 66 of 121 + 242 + 440
    assert result.value == pytest.approx((121 + 2 * 66) / (121 + 2 * 121 + 4 * 110))
    # the maximum (4) lies on box 2, outside (boxes 0 and 1 overlap at 3, inside)
    assert result.detail["pointing_game"] == 0.0
    assert result.detail["object"] == "bounding box"


def test_only_the_positive_attribution_counts():
    # CaBRNet's attributions are non-negative; a prototype counting against the class (negative contribution)
    # outside the object must not count as mass outside it. Box 0 (contribution 1) lies in the left half (the
    # object), box 1 (contribution -2) at columns 22..31: all the positive mass is inside.
    model = RegionModel([(16, 5), (16, 27)], [0, 0], [1.0, -2.0], [1.0, 0.0])
    result = run(model, left_half_batch())
    assert result.value == pytest.approx(1.0)  # |attribution| would give 121 / (121 + 2 * 110)
    assert result.detail["pointing_game"] == 1.0  # the maximum is box 0's 1, not box 1's -2
    attribution = torch.tensor([[[2.0, -3.0], [1.0, 0.0]]])
    masks = torch.tensor([[[True, False], [False, True]]])
    assert mass_inside(attribution, masks).tolist() == pytest.approx([2 / 3])
    assert mass_inside(-attribution.abs(), masks).tolist() == [0.0]  # no positive mass: 0


def test_dataset_masks_are_preferred_to_boxes():
    part_map = torch.zeros(SIZE, SIZE, dtype=torch.long)
    part_map[:, 24:] = 2  # the bird is the right quarter; its box below says the left half
    dataset = SimpleNamespace(maps=lambda index, size: (part_map, torch.zeros_like(part_map)))
    model = RegionModel([(16, 28)], [0], [1.0], [1.0, 0.0])
    result = run(model, left_half_batch(), dataset)
    assert result.detail["object"] == "object mask"
    # the region's columns are 23..31 (clipped): 8 of its 9 columns are bird
    assert result.value == pytest.approx(8 / 9) and result.detail["pointing_game"] == 1.0
    assert result.detail["per_prototype"]["region_in_object"] == pytest.approx([8 / 9])


def test_without_masks_or_boxes_the_metric_does_not_apply():
    batch = left_half_batch()
    del batch["bbox"]
    result = run(RegionModel([(16, 5)], [0], [1.0], [1.0, 0.0]), batch)
    assert result.value is None and "neither" in result.detail["reason"]


def test_box_masks_cover_the_pixels_whose_centres_are_inside():
    masks, source = object_masks(SimpleNamespace(), {"bbox": torch.tensor([[2.0, 1.0, 3.0, 2.5]])}, (6, 8))
    assert source == "bounding box"
    assert masks[0].nonzero().tolist() == [[y, x] for y in (1, 2) for x in (2, 3, 4)]


def test_a_black_box_gets_a_value_through_integrated_gradients():
    batch = left_half_batch()
    result = run(BlackBox(), batch)
    assert result.value == pytest.approx(1.0)  # all attribution lies on columns 0..7
    assert result.detail["region_in_object"] is None and result.detail["per_prototype"]["images"] == []


def test_top_area_follows_cabrnets_indexing():
    # 20 pixels valued 0..19: the threshold is the sorted map's element int(20 * 0.9) = 18, so only 19 is
    # selected (strictly above); it is inside the mask in image 0 and outside in image 1. All-zero map: none.
    attribution = torch.arange(20.0).reshape(1, 4, 5).repeat(3, 1, 1)
    attribution[2] = 0
    masks = torch.zeros(3, 4, 5, dtype=torch.bool)
    masks[0, 3, 4] = True
    masks[1, 3, 3] = True
    masks[2] = True
    assert top_area_inside(attribution, masks).tolist() == [1.0, 0.0, 0.0]
    # fraction 0.25: the threshold is element 15, so 16..19 are selected
    assert top_area_inside(attribution, masks, fraction=0.25).tolist() == [1 / 4, 1 / 4, 0.0]


def test_mass_and_pointing_agree_with_quantus():
    quantus = pytest.importorskip("quantus", reason="the cross-check against quantus needs it (the dev extra)")
    g = torch.Generator().manual_seed(0)
    attribution = torch.rand(5, SIZE, SIZE, generator=g)
    attribution[1, 3, 3] = 5.0  # a unique maximum
    attribution[2, :2, :2] = 5.0  # tied maxima, one of them inside image 2's mask only
    masks = torch.rand(5, SIZE, SIZE, generator=g) > 0.6
    masks[2, :2, :2] = False
    masks[2, 1, 1] = True
    x = np.random.default_rng(0).random((5, 3, SIZE, SIZE)).astype(np.float32)
    y = np.zeros(5, dtype=int)
    a, s = attribution[:, None].numpy(), masks[:, None].numpy().astype(np.float32)
    data = {"model": None, "x_batch": x, "y_batch": y, "a_batch": a, "s_batch": s}
    mass = quantus.RelevanceMassAccuracy(disable_warnings=True)(**data)
    hits = quantus.PointingGame(disable_warnings=True)(**data)
    assert mass_inside(attribution, masks).tolist() == pytest.approx(mass, abs=1e-6)
    assert pointing_hits(attribution, masks).tolist() == [bool(h) for h in hits]
    assert bool(pointing_hits(attribution, masks)[2])


def test_synthbirds_gives_the_bird_as_the_object():
    from protobench.data.synthbirds import build_synthbirds

    data = build_synthbirds(None, "test", num_classes=2, images_per_class=4, test_fraction=0.5, resolution=32,
                            workers=1)
    batch = {"index": torch.tensor([0, 3]), "bbox": torch.zeros(2, 4)}
    masks, source = object_masks(data, batch, (SIZE, SIZE))
    assert source == "object mask"
    for mask, index in zip(masks, [0, 3]):
        part_map = torch.from_numpy(data.render(index).part_map)
        assert torch.equal(mask, part_map > 0) and 0 < int(mask.sum()) < SIZE * SIZE


def test_interval_brackets_the_value_and_does_not_depend_on_batching():
    # Boxes of different widths give each image its own mass inside the object, so the Poisson bootstrap
    # (protobench.metrics.resampled) has something to resample; its counts are keyed by the dataset index, so
    # the same images fed whole, or shuffled across uneven batches, give the same value and interval.
    n = 16
    widths = torch.linspace(4.0, 30.0, n)
    images = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1] * (n // 2))
    boxes = torch.stack([torch.zeros(n), torch.zeros(n), widths, torch.full((n,), 32.0)], dim=1)
    model = RegionModel([(16, 5), (16, 15), (16, 27)], [0, 1, -1], [1.0, 2.0, 4.0], [1.0, 0.0])

    def relevance(order: list[int], sizes: list[int]):
        metric = OBJECT_RELEVANCE.compute(model, EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu"),
                                                             seed=7))
        order, start = torch.tensor(order), 0
        for size in sizes:
            i = order[start:start + size]
            start += size
            with torch.no_grad():
                metric.update({"image": images[i], "label": labels[i], "index": i, "bbox": boxes[i]},
                              model.explain(images[i]))
        return metric.compute()

    whole = relevance(list(range(n)), [n])
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(1)).tolist()
    pieces = relevance(shuffled, [3, 6, 1, 6])
    assert 0 < whole.value < 1
    low, high = whole.interval
    assert low <= whole.value <= high and low < high
    # float64 sums in another order: equal up to rounding
    assert pieces.value == pytest.approx(whole.value, rel=1e-12, abs=0)
    assert pieces.interval == pytest.approx(whole.interval, rel=1e-12, abs=0)
    assert pieces.detail["per_prototype"] == whole.detail["per_prototype"]
