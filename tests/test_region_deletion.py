"""Prototype-region deletion on handcrafted models whose drops are known, and agreement with quantus."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.metrics.region_deletion import (
    REGION_DELETION,
    RegionDeletion,
    attribution_boxes,
    control_masks,
    cumulative_masks,
    fill_images,
)

SIZE = 32  # px; regions are 11 x 11 (half size round(36 * 32 / 224) = 5)


def peak_maps(centres: torch.Tensor, size: int) -> torch.Tensor:
    """Image-sized similarity maps ``[B, P, size, size]`` (upsampling is the identity) peaking at (y, x)."""
    b, p = centres.shape[:2]
    maps = torch.zeros(b, p, size, size)
    maps[torch.arange(b)[:, None], torch.arange(p)[None], centres[..., 0], centres[..., 1]] = 1.0
    return maps


class RegionModel(PrototypeModel):
    """Prototypes with fixed regions (centres) and contributions; logits = ``read(images)``."""

    def __init__(self, centres: torch.Tensor, weights: torch.Tensor,
                 read: Callable[[torch.Tensor], torch.Tensor], size: int = SIZE):
        super().__init__()
        self.num_classes = weights.shape[1]
        self.input_size = (size, size)
        self.config = {}
        self.register_buffer("prototype_classes", weights.argmax(dim=1))
        self.centres, self.weights, self.read, self.size = centres, weights, read, size

    def explain(self, x: torch.Tensor) -> Explanation:
        b = len(x)
        contributions = self.weights[None].expand(b, -1, -1) * (1 + x.mean(dim=(1, 2, 3)))[:, None, None]
        maps = peak_maps(self.centres.expand(b, -1, -1), self.size)
        return Explanation(logits=self.read(x), similarities=maps, contributions=contributions)


class BlackBox(PrototypeModel):
    """No prototypes; logits = ``read(images)``."""

    def __init__(self, read: Callable[[torch.Tensor], torch.Tensor], classes: int = 2):
        super().__init__()
        self.num_classes, self.input_size, self.config = classes, (SIZE, SIZE), {}
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))
        self.read = read

    def explain(self, x: torch.Tensor) -> Explanation:
        return Explanation(logits=self.read(x), similarities=x.new_zeros(len(x), 0, 1, 1))


def run(model: PrototypeModel, images: torch.Tensor, labels, **options):
    context = EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu"), seed=3, options=options)
    metric = REGION_DELETION.compute(model, context)
    batch = {"image": images, "label": torch.as_tensor(labels), "index": torch.arange(len(images))}
    with torch.no_grad():
        metric.update(batch, model.explain(images))
    return metric.compute()


def square_reader(x0: int, y0: int, side: int, other: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Class 0's logit is the sum of channel 0 over the square; class 1's is ``other``."""
    def read(x: torch.Tensor) -> torch.Tensor:
        inside = x[:, 0, y0 : y0 + side, x0 : x0 + side].sum(dim=(1, 2))
        return torch.stack([inside, torch.full_like(inside, other)], dim=1)
    return read


# -- building blocks ----------------------------------------------------------------------------------------

def test_cumulative_masks_are_unions_of_the_first_boxes():
    boxes = torch.tensor([[[0, 0, 1, 1], [1, 1, 2, 2]]])
    masks = cumulative_masks(boxes, (4, 4))
    assert masks[0, 0].sum() == 4 and masks[0, 1].sum() == 7
    assert bool((masks[0, 1] >= masks[0, 0]).all())


def test_control_masks_keep_each_masks_area_and_are_seeded():
    masks = cumulative_masks(torch.tensor([[[0, 0, 10, 10], [20, 5, 31, 12]]] * 3), (SIZE, SIZE))
    control = control_masks(masks, torch.tensor([0, 1, 2]), seed=0)
    assert control.sum(dim=(2, 3)).tolist() == masks.sum(dim=(2, 3)).tolist()
    assert torch.equal(control, control_masks(masks, torch.tensor([0, 1, 2]), seed=0))
    assert not torch.equal(control, control_masks(masks, torch.tensor([0, 1, 2]), seed=1))
    assert not torch.equal(control[0], control[1])  # each image its own offset


def test_fills():
    images = torch.rand(2, 3, 8, 8)
    mean = fill_images(images, "mean", torch.arange(2), 0)
    assert torch.allclose(mean[:, :, 3, 4], images.mean(dim=(2, 3)))
    noise = fill_images(images, "noise", torch.tensor([5, 6]), 0)
    assert torch.equal(noise[0], fill_images(images[:1], "noise", torch.tensor([5]), 0)[0])
    grey = torch.full((1, 3, 8, 8), 0.4)
    assert torch.allclose(fill_images(grey, "blur", torch.arange(1), 0), grey)
    assert torch.equal(fill_images(images, 0.25, torch.arange(2), 0), torch.full_like(images, 0.25))
    with pytest.raises(ValueError, match="unknown fill"):
        fill_images(images, "zeros", torch.arange(2), 0)
    with pytest.raises(ValueError, match="unknown fill"):
        RegionDeletion(BlackBox(square_reader(0, 0, 1)), fill="zeros")


def test_attribution_boxes_are_greedy_and_do_not_overlap():
    attribution = torch.zeros(1, SIZE, SIZE)
    attribution[0, 8, 8] = 3.0
    attribution[0, 10, 10] = 2.0  # inside the first box: not a second centre
    attribution[0, 25, 20] = 1.0
    boxes = attribution_boxes(attribution, 2, (5, 5))
    assert boxes[0, 0].tolist() == [0, 0, 10, 10]  # first centre in row-major order whose box holds 3 and 2
    assert boxes[0, 1].tolist() == [10, 15, 20, 25]  # the first box holding the 1 that overlaps no chosen box
    masks = cumulative_masks(boxes, (SIZE, SIZE))
    assert masks[0, 1].sum() == 2 * 11 * 11  # ... and the second does not overlap it


# -- the metric ---------------------------------------------------------------------------------------------

def test_a_model_that_ignores_the_input_has_no_drop():
    centres = torch.tensor([[[5, 5], [20, 20], [10, 25]]])
    constant = lambda x: torch.tensor([[1.0, -2.0]]).expand(len(x), -1)
    result = run(RegionModel(centres, torch.tensor([[1.0, 0], [0.5, 0], [0.2, 0]]), constant),
                 torch.rand(4, 3, SIZE, SIZE), [0, 0, 1, 1])
    assert result.value == 0.0
    assert result.detail["curves"]["logit_drop"] == [0.0] * 3 and result.detail["auc"] == 0.0
    assert result.detail["curves"]["control_probability_drop"] == [0.0] * 3
    assert result.detail["curves"]["control_accuracy_drop"] == [0.0] * 3
    assert result.detail["top_k"] == 3  # min(TOP_K, prototypes)


def test_a_model_reading_one_region_loses_exactly_that_region():
    # Prototype 1 (largest contribution to class 0) has the 11 x 11 region around (y, x) = (10, 12), which the
    # model reads; channel 0 is 1 there and 0 elsewhere, so the mean fill is 121 / 1024 everywhere.
    centres = torch.tensor([[[25, 25], [10, 12], [3, 28]]])
    weights = torch.tensor([[0.5, 0.0], [2.0, 0.0], [0.1, 0.0]])
    images = torch.zeros(2, 3, SIZE, SIZE)
    images[:, 0, 5:16, 7:18] = 1.0
    model = RegionModel(centres, weights, square_reader(7, 5, 11, other=20.0))
    result = run(model, images, [0, 0], region_deletion_top_k=2)
    mean = 121 / SIZE**2
    expected = 121 - 121 * mean  # class 0's logit falls from 121 to 14.2, below class 1's 20
    curve = result.detail["curves"]["logit_drop"]
    assert curve == pytest.approx([expected, expected])  # the second region (around (25, 25)) is outside
    assert result.detail["accuracy_drop"] == 1.0
    assert result.detail["regions"] == "prototype regions"
    # the value is in probabilities: class 0's falls from sigmoid(121 - 20) to sigmoid(14.2 - 20)
    probability = torch.sigmoid(torch.tensor(101.0, dtype=torch.float64))
    drop = float(probability - torch.sigmoid(torch.tensor(121 - expected - 20, dtype=torch.float64)))
    assert result.detail["curves"]["probability_drop"] == pytest.approx([drop, drop])
    assert result.detail["auc"] == pytest.approx(drop)  # trapezoid over k = 1, 2
    # the control removes the same two regions rolled by each image's seeded offset: it takes only some of
    # the square's 121 pixels, so class 0 keeps most of its logit
    masks = cumulative_masks(torch.tensor([[[7, 5, 17, 15], [20, 20, 30, 30]]] * 2), (SIZE, SIZE))
    rolled = control_masks(masks, torch.arange(2), seed=3)[:, -1, 5:16, 7:18].sum(dim=(1, 2)).double()
    assert 0 <= rolled.max() < 60
    control_logit = 121 - rolled * (1 - mean)
    control_drop = float((probability - torch.sigmoid(control_logit - 20)).mean())
    assert result.detail["control_logit_drop"] == pytest.approx(float((121 - control_logit).mean()))
    assert result.detail["control_probability_drop"] == pytest.approx(control_drop, abs=1e-9)
    assert result.value == pytest.approx(drop - control_drop) and result.value > 0.99


def test_the_value_is_the_same_for_logits_and_log_probabilities():
    # ProtoPNet's logits are a linear layer's outputs, ProtoTree's are log-probabilities: the same
    # probabilities give the same value, while the logit drops (in the detail) differ
    centres = torch.tensor([[[10, 12], [25, 25]]])
    weights = torch.tensor([[2.0, 0.0], [0.5, 0.0]])
    images = torch.zeros(3, 3, SIZE, SIZE)
    images[:, 0, 5:16, 7:18] = torch.rand(3, 11, 11, generator=torch.Generator().manual_seed(0)) * 0.05
    read = square_reader(7, 5, 11, other=2.0)
    logits = run(RegionModel(centres, weights, read), images, [0, 1, 1])
    log_read = lambda x: read(x).log_softmax(dim=1)
    log_probabilities = run(RegionModel(centres, weights, log_read), images, [0, 1, 1])
    assert log_probabilities.value == pytest.approx(logits.value, abs=1e-6) and logits.value != 0
    assert log_probabilities.detail["logit_drop"] != pytest.approx(logits.detail["logit_drop"])


def test_a_black_box_is_scored_through_integrated_gradients():
    # The model reads a 5 x 5 square; Integrated Gradients puts all attribution there, so the first box
    # (11 x 11, centred on the square) removes all of it.
    images = torch.zeros(2, 3, SIZE, SIZE)
    images[:, 0, 20:25, 3:8] = 1.0
    model = BlackBox(square_reader(3, 20, 5, other=10.0))
    result = run(model, images, [0, 0], region_deletion_top_k=2, region_deletion_fill=0.0)
    assert result.detail["regions"] == "attribution boxes"
    assert result.detail["curves"]["logit_drop"] == pytest.approx([25.0, 25.0])
    assert result.detail["accuracy_drop"] == pytest.approx(1.0)


def test_region_deletion_agrees_with_quantus_region_perturbation():
    quantus = pytest.importorskip("quantus", reason="the cross-check against quantus needs it (the dev extra)")
    # 33 px: regions are 11 x 11 (half size round(36 * 33 / 224) = 5), and a prototype centred on a cell of
    # the 3 x 3 grid of 11 px patches has exactly that patch as its region: quantus's patches are our regions.
    size, patch = 33, 11
    torch.manual_seed(0)
    centres = torch.tensor([[[5 + patch * (i // 3), 5 + patch * (i % 3)] for i in range(9)]])
    weights = torch.randn(9, 3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(16, 3))
    model = RegionModel(centres, weights, net, size=size).eval()
    images = torch.rand(4, 3, size, size)
    fill, k = 0.3, 5
    result = run(model, images, [0, 1, 2, 0], region_deletion_top_k=k, region_deletion_fill=fill)

    with torch.no_grad():
        explanation = model.explain(images)
    target = explanation.logits.argmax(dim=1)
    patch_masks = torch.zeros(9, size, size)
    for p, (y, x) in enumerate(centres[0].tolist()):
        patch_masks[p, y - 5 : y + 6, x - 5 : x + 6] = 1.0
    contributions = explanation.contributions[torch.arange(4), :, target]  # [B, 9]
    attribution = torch.einsum("bp,phw->bhw", contributions, patch_masks)[:, None].numpy()
    for softmax, name in ((False, "logit_drop"), (True, "probability_drop")):
        metric = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=k, order="morf", abs=False,
                                            perturb_baseline=fill, normalise=False, disable_warnings=True)
        curves = metric(model=model, x_batch=images.numpy(), y_batch=target.numpy(), a_batch=attribution,
                        softmax=softmax, device="cpu")
        mean_curve = np.mean(np.asarray(curves), axis=0)
        assert np.abs(mean_curve).min() > 1e-4  # every step changes the scores: the agreement is not 0 == 0
        assert result.detail["curves"][name] == pytest.approx(mean_curve.tolist(), abs=1e-5)
    # quantus's get_auc_score calls np.trapz, which numpy 2 removed: its area is np.trapezoid of its curves
    assert result.detail["auc"] == pytest.approx(float(np.mean(np.trapezoid(curves, axis=1))), abs=1e-5)


def test_the_interval_covers_the_value_and_does_not_depend_on_the_batches():
    # six images whose read square holds a different brightness: the drops differ from image to image
    centres = torch.tensor([[[10, 12], [25, 25]]])
    weights = torch.tensor([[2.0, 0.0], [0.5, 0.0]])
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, SIZE, SIZE, generator=generator) * 0.2
    images[:, 0, 5:16, 7:18] += torch.rand(6, 1, 1, generator=generator) * 0.3
    model = RegionModel(centres, weights, square_reader(7, 5, 11, other=10.0))
    labels = torch.tensor([0, 1, 0, 0, 1, 0])

    def split(sizes: list[int]):
        context = EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu"), seed=3,
                              options={"region_deletion_top_k": 2})
        metric = REGION_DELETION.compute(model, context)
        assert metric.seed == 3
        start = 0
        for n in sizes:
            rows = slice(start, start + n)
            batch = {"image": images[rows], "label": labels[rows], "index": torch.arange(start, start + n)}
            with torch.no_grad():
                metric.update(batch, model.explain(images[rows]))
            start += n
        return metric.compute()

    whole = split([6])
    low, high = whole.interval
    assert low <= whole.value <= high and low < high
    assert whole.value > 0.01  # the regions hurt more than the control
    for sizes in ([1] * 6, [4, 2]):
        result = split(sizes)
        assert result.value == pytest.approx(whole.value)
        assert result.interval == pytest.approx(whole.interval)
