"""'This looks like that, because': perturbations change what they name; influences follow the similarity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.explain.because import (
    CHARACTERISTICS,
    describe,
    global_influences,
    local_influences,
    lower_contrast,
    lower_saturation,
    perturb,
    shift_hue,
    smooth_texture,
    warp_shape,
)
from protobench.metrics.because import BECAUSE


def hue(rgb: torch.Tensor) -> torch.Tensor:
    """Hue in turns [0, 1) of colours ``[..., 3, ...]`` along dim -3 (the hexcone formula)."""
    r, g, b = rgb.unbind(-3)
    top, low = rgb.amax(-3), rgb.amin(-3)
    span = (top - low).clamp(min=1e-8)
    h = torch.where(
        top == r, ((g - b) / span) % 6, torch.where(top == g, (b - r) / span + 2, (r - g) / span + 4)
    )
    return h / 6


class HueModel(PrototypeModel):
    """One prototype; its similarity on each 4x4 patch is ``1 + cos(2 pi hue(mean colour of the patch))``."""

    def __init__(self):
        super().__init__()
        self.config, self.num_classes, self.input_size = {}, 1, (16, 16)
        self.register_buffer("prototype_classes", torch.tensor([0]))

    def explain(self, x):
        sims = 1 + torch.cos(2 * math.pi * hue(F.avg_pool2d(x, 4)))[:, None]
        return Explanation(logits=sims.flatten(1).amax(1, keepdim=True), similarities=sims)


def uniform(*colours: tuple[float, float, float], size: int = 16) -> torch.Tensor:
    return torch.tensor(colours)[:, :, None, None].expand(-1, 3, size, size).clone()


def pattern(size: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(2, 3, size, size) * 0.8 + 0.1


@pytest.mark.parametrize(
    "perturbation", [shift_hue, warp_shape, smooth_texture, lower_contrast, lower_saturation]
)
def test_every_perturbation_keeps_size_and_range_and_changes_the_image(perturbation):
    x = pattern()
    y = perturbation(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert not torch.allclose(x, y, atol=1e-3)
    assert perturb(x).shape == (len(CHARACTERISTICS) * 2, 3, 32, 32)


def test_hue_shift_turns_the_hue_by_a_tenth_and_keeps_the_brightness():
    x = uniform((0.9, 0.2, 0.2), (0.3, 0.8, 0.3))
    y = shift_hue(x)
    turned = (hue(y) - hue(x)) % 1
    assert torch.allclose(turned, torch.full_like(turned, 0.1), atol=2e-3)
    assert torch.allclose(y.amax(1), x.amax(1), atol=1e-5)


def test_contrast_shrinks_deviations_from_the_grey_mean_by_the_factor():
    x = pattern()
    grey = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean((1, 2))[:, None, None, None]
    assert torch.allclose(lower_contrast(x) - grey, 0.45 * (x - grey), atol=1e-5)


def test_saturation_shrinks_the_channel_spread_by_the_factor_and_keeps_the_hue():
    x = pattern()
    y = lower_saturation(x)
    assert torch.allclose(y.amax(1) - y.amin(1), 0.7 * (x.amax(1) - x.amin(1)), atol=1e-5)
    assert torch.allclose(hue(y), hue(x), atol=1e-3)


def test_shape_warp_moves_pixels_without_changing_them():
    x = pattern(224)
    y = warp_shape(x)
    assert torch.equal(
        y.flatten(1).sort(1).values, x.flatten(1).sort(1).values
    )  # a permutation of each channel
    assert torch.equal(warp_shape(uniform((0.2, 0.5, 0.7), size=224)), uniform((0.2, 0.5, 0.7), size=224))


def test_texture_smoothing_removes_fine_detail_and_keeps_the_mean():
    x = torch.zeros(1, 3, 224, 224)
    x[..., ::2, :] = 1.0  # one-pixel stripes: pure texture
    y = smooth_texture(x)
    assert float(y.std()) < 0.2 * float(x.std())
    assert abs(float(y.mean()) - float(x.mean())) < 0.01


def test_a_prototype_of_hue_alone_is_explained_by_hue_alone():
    images = uniform((0.9, 0.1, 0.1), (0.2, 0.3, 0.9))
    original, influences = local_influences(HueModel(), images)
    h = hue(images[:, :, :1, :1])[:, 0, 0]
    assert torch.allclose(original[:, 0], 1 + torch.cos(2 * math.pi * h), atol=1e-5)
    expected_hue = torch.cos(2 * math.pi * h) - torch.cos(2 * math.pi * (h + 0.1))
    by_name = dict(zip(CHARACTERISTICS, influences[:, :, 0].T))
    assert torch.allclose(by_name["hue"], expected_hue, atol=5e-3)
    assert float(by_name["hue"].abs().min()) > 0.1
    for name in ("shape", "texture", "contrast", "saturation"):
        assert torch.allclose(by_name[name], torch.zeros(2), atol=1e-3), name


def test_global_influence_is_the_similarity_weighted_mean_and_the_metric_streams_it():
    images = uniform((0.9, 0.1, 0.1), (0.2, 0.3, 0.9), (0.1, 0.8, 0.3))
    model = HueModel()
    original, influences = local_influences(model, images)
    weight = original[:, 0]
    expected = (influences[:, :, 0] * weight[:, None]).sum(0) / weight.sum()
    assert torch.allclose(global_influences(model, [images[:2], images[2:]])[:, 0], expected, atol=1e-6)

    state = BECAUSE.compute(model, None)
    for part in (images[:1], images[1:]):
        state.update({"image": part}, model.explain(part))
    result = state.compute()
    per = result.detail["per_prototype"]
    assert per["dominant"] == ["hue"]
    assert per["hue"][0] == pytest.approx(float(expected[0]), abs=1e-5)
    mean_similarity = float((weight**2).sum() / weight.sum())
    assert result.value == pytest.approx(float(expected.max()) / mean_similarity, abs=1e-5)


def test_no_prototype_ever_similar_is_an_error_not_a_zero():
    class Dark(HueModel):
        def explain(self, x):
            return Explanation(logits=x.new_zeros(len(x), 1), similarities=x.new_zeros(len(x), 1, 4, 4))

    state = BECAUSE.compute(Dark(), None)
    images = uniform((0.5, 0.5, 0.5))
    state.update({"image": images}, Dark().explain(images))
    with pytest.raises(ValueError, match="no prototype is ever similar"):
        state.compute()
    assert BECAUSE.needs == {"prototypes"}


def test_describe_orders_the_influences_and_names_the_dominant_one():
    text = describe({"hue": 0.12, "shape": 0.41, "texture": None, "contrast": -0.05, "saturation": 0.0})
    assert text == "shape 0.41, hue 0.12, saturation 0.00, contrast -0.05 (shape dominates)"
    assert describe({"hue": -0.1}) == "hue -0.10 (no characteristic lowers it)"
    assert describe({"hue": None}) == "no influence measured"


def test_a_prototype_never_similar_is_reported_as_none_and_left_out_of_the_value():
    class HueAndDark(HueModel):
        def __init__(self):
            super().__init__()
            self.prototype_classes = torch.tensor([0, -1])

        def explain(self, x):
            hue_only = super().explain(x)
            sims = torch.cat([hue_only.similarities, torch.zeros_like(hue_only.similarities)], dim=1)
            return Explanation(logits=hue_only.logits, similarities=sims)

    images = uniform((0.9, 0.1, 0.1))
    both, alone = BECAUSE.compute(HueAndDark(), None), BECAUSE.compute(HueModel(), None)
    both.update({"image": images}, HueAndDark().explain(images))
    alone.update({"image": images}, HueModel().explain(images))
    result = both.compute()
    assert result.detail["per_prototype"]["dominant"] == ["hue", None]
    assert result.detail["per_prototype"]["shape"][1] is None
    assert result.detail["prototypes_never_similar"] == 1
    assert result.value == pytest.approx(alone.compute().value)


def test_the_interval_covers_the_value_and_does_not_depend_on_the_batches():
    images = uniform((0.9, 0.1, 0.1), (0.2, 0.3, 0.9), (0.1, 0.8, 0.3), (0.8, 0.7, 0.1), (0.6, 0.2, 0.8),
                     (0.3, 0.8, 0.8))
    model = HueModel()

    def split(sizes: list[int]):
        state = BECAUSE.compute(model, EvalContext(dataset=None, device=torch.device("cpu"), seed=5))
        assert state.seed == 5
        start = 0
        for n in sizes:
            part = images[start:start + n]
            state.update({"image": part, "label": torch.zeros(n, dtype=torch.long),
                          "index": torch.arange(start, start + n)}, model.explain(part))
            start += n
        return state.compute()

    whole = split([6])
    low, high = whole.interval
    assert low <= whole.value <= high and low < high
    assert whole.value != 0
    for sizes in ([1] * 6, [2, 4]):
        result = split(sizes)
        assert result.value == pytest.approx(whole.value)
        assert result.interval == pytest.approx(whole.interval)
