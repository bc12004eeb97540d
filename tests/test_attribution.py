"""Attribution maps: prototype regions weighted by contributions, Integrated Gradients for black boxes."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from protobench.api.contract import Explanation, PrototypeModel
from protobench.explain.attribution import (
    attribution_maps,
    box_masks,
    integrated_gradients,
    prototype_attribution,
    reusing_integrated_gradients,
)


class BoxModel(PrototypeModel):
    """Three prototypes (classes 0, 1 and -1) with fixed boxes and fixed contributions."""

    def __init__(self, contributions: Tensor, boxes: Tensor, classes: tuple[int, ...] = (0, 1, -1)):
        super().__init__()
        self.num_classes, self.input_size, self.config = 2, (8, 8), {}
        self.register_buffer("prototype_classes", torch.tensor(classes))
        self.fixed_contributions, self.boxes = contributions, boxes

    def explain(self, x: Tensor) -> Explanation:
        b = len(x)
        contributions = self.fixed_contributions.expand(b, -1, -1)
        return Explanation(logits=contributions.sum(1), similarities=torch.ones(b, 3, 2, 2),
                           contributions=contributions)

    def regions(self, explanation: Explanation, image_size: tuple[int, int]) -> Tensor:
        return self.boxes.expand(len(explanation.logits), -1, -1)


class Linear(PrototypeModel):
    """A black box whose logit c is sum(w_c * x): Integrated Gradients from 0 is exactly w_c * x."""

    def __init__(self):
        super().__init__()
        self.num_classes, self.input_size, self.config = 2, (4, 4), {}
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))
        self.weight = nn.Parameter(torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)))

    def explain(self, x: Tensor) -> Explanation:
        logits = torch.einsum("bchw,kchw->bk", x, self.weight)
        return Explanation(logits=logits, similarities=x.new_zeros(len(x), 0, 1, 1))


BOXES = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3], [1, 1, 2, 2]])  # inclusive (x0, y0, x1, y1)


def test_box_masks_are_inclusive():
    rows, columns = box_masks(torch.tensor([[1, 2, 3, 2]]), (4, 5))
    assert rows.tolist() == [[0, 0, 1, 0]]
    assert columns.tolist() == [[0, 1, 1, 1, 0]]


def test_prototype_map_sums_the_class_prototypes_regions_times_their_contribution():
    contributions = torch.tensor([[[2.0, -7.0], [5.0, 3.0], [0.5, 0.25]]])  # [1, P, C]
    model = BoxModel(contributions, BOXES)
    images = torch.zeros(2, 3, 8, 8)
    maps = attribution_maps(model, images, torch.tensor([0, 1]))
    expected0 = torch.zeros(8, 8)
    expected0[0:2, 0:2] += 2.0  # class 0's own prototype
    expected0[1:3, 1:3] += 0.5  # the class-free prototype; prototype 1 (class 1) is left out
    expected1 = torch.zeros(8, 8)
    expected1[2:4, 2:4] += 3.0
    expected1[1:3, 1:3] += 0.25
    assert torch.equal(maps[0], expected0)
    assert torch.equal(maps[1], expected1)


def test_unweighted_map_is_the_union_of_the_class_regions():
    model = BoxModel(torch.ones(1, 3, 2), BOXES)
    explanation = model.explain(torch.zeros(1, 3, 8, 8))
    union = prototype_attribution(model, explanation, torch.tensor([0]), (8, 8), weighted=False)
    assert union.max() == 1.0
    assert int(union.sum()) == 4 + 4 - 1  # two 2x2 boxes overlapping in one pixel


def test_union_holds_only_the_prototypes_adding_evidence_for_the_class():
    # class 0: prototype 0 adds 2, class-free prototype 1 adds nothing (a ProtoTree node off the path) and
    # class-free prototype 2 counts against it (-1): only box 0 is in the union; the weighted map has all 3
    contributions = torch.tensor([[[2.0, 1.0], [0.0, 1.0], [-1.0, 1.0]]])
    model = BoxModel(contributions, BOXES, classes=(0, -1, -1))
    explanation = model.explain(torch.zeros(1, 3, 8, 8))
    union = prototype_attribution(model, explanation, torch.tensor([0]), (8, 8), weighted=False)
    expected = torch.zeros(1, 8, 8)
    expected[0, 0:2, 0:2] = 1.0
    assert torch.equal(union, expected)
    weighted = prototype_attribution(model, explanation, torch.tensor([0]), (8, 8))
    expected = 2.0 * expected
    expected[0, 1:3, 1:3] -= 1.0
    assert torch.equal(weighted, expected)
    # class 1: both class-free prototypes add 1 (prototype 0 is class 0's): boxes 1 and 2, sharing a pixel
    union = prototype_attribution(model, explanation, torch.tensor([1]), (8, 8), weighted=False)
    assert int(union.sum()) == 4 + 4 - 1


def test_a_class_without_prototypes_gets_an_empty_map():
    model = BoxModel(torch.ones(1, 3, 2), BOXES, classes=(0, 0, 0))
    assert attribution_maps(model, torch.zeros(1, 3, 8, 8), torch.tensor([1])).abs().sum() == 0


def test_black_box_gets_integrated_gradients_summed_over_channels():
    torch.manual_seed(0)
    model = Linear()
    images = torch.rand(2, 3, 4, 4)
    target = torch.tensor([1, 0])
    with torch.inference_mode():  # the harness's pass may run without autograd
        maps = attribution_maps(model, images, target)
    expected = (model.weight[target] * images).sum(1)
    assert maps.shape == (2, 4, 4)
    torch.testing.assert_close(maps, expected.detach(), rtol=1e-4, atol=1e-5)
    # completeness (Sundararajan et al., 2017, Prop. 1): the map sums to logit(x) - logit(black)
    torch.testing.assert_close(maps.sum((1, 2)), model(images)[[0, 1], target].detach(), rtol=1e-4, atol=1e-5)


def test_prototype_map_without_contributions_is_an_error():
    model = BoxModel(torch.ones(1, 3, 2), BOXES)
    explanation = Explanation(logits=torch.zeros(1, 2), similarities=torch.ones(1, 3, 2, 2))
    for weighted in (True, False):
        with pytest.raises(ValueError, match="contributions"):
            prototype_attribution(model, explanation, torch.tensor([0]), (8, 8), weighted=weighted)


class Counting(nn.Module):
    """A linear black box over pixels that counts its forward calls."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, 3)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.linear(x.flatten(1))


def test_integrated_gradients_are_reused_only_in_the_block_for_the_same_unchanged_images_weights_and_targets():
    """On a linear model from a black image Integrated Gradients is exact: x * w[target], summed over channels."""
    torch.manual_seed(0)
    model, images, target = Counting(), torch.rand(2, 3, 4, 4), torch.tensor([0, 2])

    def exact(t: Tensor) -> Tensor:
        return (images * model.linear.weight[t].view(2, 3, 4, 4)).sum(dim=1).detach()

    first = integrated_gradients(model, images, target)
    calls = model.calls
    torch.testing.assert_close(integrated_gradients(model, images, target), first)
    assert model.calls > calls  # outside a block nothing is kept
    with reusing_integrated_gradients():
        first = integrated_gradients(model, images, target)
        torch.testing.assert_close(first, exact(target), rtol=1e-4, atol=1e-5)
        calls = model.calls
        again = integrated_gradients(model, images, target)
        assert model.calls == calls and torch.equal(again, first)
        again.zero_()  # the caller's copy: the kept result is not touched
        assert torch.equal(integrated_gradients(model, images, target), first) and model.calls == calls
        calls = model.calls
        integrated_gradients(model, images.clone(), target)  # equal values, another tensor: computed again
        assert model.calls > calls
        other = torch.tensor([1, 2])
        torch.testing.assert_close(integrated_gradients(model, images, other), exact(other), rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            for change in (lambda: images.mul_(0.5), lambda: model.linear.weight.mul_(2.0)):
                integrated_gradients(model, images, target)
                calls = model.calls
                change()
                torch.testing.assert_close(integrated_gradients(model, images, target), exact(target), rtol=1e-4,
                                           atol=1e-5)
                assert model.calls > calls
