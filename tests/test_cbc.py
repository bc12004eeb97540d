"""Tests of the CBC family (plugins/protobench_cbc): reasoning, losses, certified radius, contract."""

from __future__ import annotations

import math

import pytest
import torch
from protobench_cbc.model import RobustCBC
from protobench_cbc.reasoning import ReasoningHead, margin_loss, robust_loss, robust_radius

from protobench.testing import check_model


def _stable_head(positive: list[list[float]], negative: list[list[float]]) -> ReasoningHead:
    """A 2-component head whose softmax gives exactly ``positive`` and ``negative`` ([K, C] each)."""
    head = ReasoningHead(2, 2)
    probabilities = torch.tensor(positive + negative)
    with torch.no_grad():
        head.weights.copy_(torch.log(probabilities))
    return head


# class 0: component 0 present (r+ 0.8), component 1 absent (r- 0.2);
# class 1: component 1 present (r+ 0.5), component 0 absent (r- 0.5)
POSITIVE = [[0.8, 0.0], [0.0, 0.5]]
NEGATIVE = [[0.0, 0.5], [0.2, 0.0]]


def test_stable_reasoning_matches_hand_computed_values() -> None:
    head = _stable_head(POSITIVE, NEGATIVE)
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.25]])
    # p_c = d . (r+_c - r-_c) + sum r-_c
    # class 0: d0 * 0.8 - d1 * 0.2 + 0.2; class 1: -d0 * 0.5 + d1 * 0.5 + 0.5
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.55, 0.375]])
    assert torch.allclose(head(d), expected, atol=1e-6)


def test_stable_probabilities_are_agreement_sums_in_unit_interval() -> None:
    """Eq. 5: p_c = sum_k d_k r+ + (1 - d_k) r-, with sum_k r+ + r- = 1, so 0 <= p_c <= 1."""
    torch.manual_seed(0)
    head = ReasoningHead(5, 3)
    positive, negative = head.reasoning_probabilities()
    assert torch.allclose((positive + negative).sum(0), torch.ones(3))
    d = torch.rand(7, 5)
    agreement = d @ positive + (1 - d) @ negative
    p = head(d)
    assert torch.allclose(p, agreement, atol=1e-6)
    assert (p >= 0).all() and (p <= 1).all()


def test_original_reasoning_matches_hand_computed_values() -> None:
    head = ReasoningHead(2, 1, reasoning="original")
    with torch.no_grad():
        head.weights.copy_(torch.tensor([[[1.0], [0.0]], [[0.0], [0.5]]]))  # r+ = [1, 0], r- = [0, 0.5]
    d = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # p = (d.(r+ - r-) + sum r-) / sum(r+ + r-) = (d0 - 0.5 d1 + 0.5) / 1.5
    assert torch.allclose(head(d)[:, 0], torch.tensor([1.0 / 1.5, 1.0]), atol=1e-6)


def test_contributions_are_present_evidence_and_absence_is_extra() -> None:
    """By hand: contributions d (r+ - r-), absence evidence (1 - d) r-, baseline sum_k r-; they add up to p."""
    head = _stable_head(POSITIVE, NEGATIVE)
    d = torch.tensor([[1.0, 0.0], [0.5, 0.25]])  # image 0: component 0 present, component 1 absent
    contributions, absent, baseline = head.evidence(d, head.concept_probabilities(d))
    # image 0: class 0: component 0 present, r+ 0.8 -> 0.8; component 1 absent -> 0 (located nowhere)
    #          class 1: component 0 present, r- 0.5 -> -0.5 (present although class 1 needs it absent); 0
    # image 1: class 0: 0.5 * 0.8 = 0.4, 0.25 * (0 - 0.2) = -0.05; class 1: 0.5 * -0.5 = -0.25, 0.25 * 0.5
    expected = torch.tensor([[[0.8, -0.5], [0.0, 0.0]], [[0.4, -0.25], [-0.05, 0.125]]])
    assert torch.allclose(contributions, expected, atol=1e-6)
    # absence evidence (1 - d) r-: image 0: class 0 because component 1 is absent (0.2); class 1: 0.5 * 0
    expected_absent = torch.tensor([[[0.0, 0.0], [0.2, 0.0]], [[0.0, 0.25], [0.15, 0.0]]])
    assert torch.allclose(absent, expected_absent, atol=1e-6)
    assert torch.allclose(baseline, torch.tensor([[0.2, 0.5], [0.2, 0.5]]), atol=1e-6)
    p = head(d)  # [[1.0, 0.0], [0.55, 0.375]] (test_stable_reasoning_matches_hand_computed_values)
    assert torch.allclose(p, torch.tensor([[1.0, 0.0], [0.55, 0.375]]), atol=1e-6)
    # Eq. 5: p = d . (r+ - r-) + sum r-
    assert torch.allclose(contributions.sum(1) + baseline, p, atol=1e-6)
    # and p = sum_k d r+ + (1 - d) r-, the presence evidence d r+ being contributions + d r-
    negative = torch.tensor(NEGATIVE)
    presence = contributions + d[:, :, None] * negative[None]
    assert torch.allclose((presence + absent).sum(1), p, atol=1e-6)


def test_evidence_sums_to_probabilities_with_several_concepts_per_class() -> None:
    torch.manual_seed(0)
    for reasoning in ("stable", "original"):
        head = ReasoningHead(5, 3, reasoning, reasonings_per_class=2)
        d = torch.rand(4, 5)
        contributions, absent, baseline = head.evidence(d, head.concept_probabilities(d))
        assert torch.allclose(contributions.sum(1) + baseline, head(d), atol=1e-5)
        assert (absent >= 0).all()


def test_model_explanation_carries_absent_evidence() -> None:
    model = _shallow_model()
    model.eval()
    out = model.explain(torch.randn(5, 4))
    assert out.extra["absent_evidence"].shape == out.contributions.shape == (5, 6, 3)
    assert torch.allclose(out.contributions.sum(1) + out.extra["baseline"], out.extra["probabilities"], atol=1e-5)


def test_margin_loss_by_hand() -> None:
    p = torch.tensor([[0.6, 0.3, 0.5], [0.2, 0.9, 0.1]])
    labels = torch.tensor([0, 0])
    # row 0: 0.5 - 0.6 + 0.025 -> 0; row 1: 0.9 - 0.2 + 0.025 = 0.725
    assert torch.allclose(margin_loss(p, labels, 0.025), torch.tensor([0.0, 0.725]))
    assert torch.allclose(margin_loss(p, labels, 0.2), torch.tensor([0.1, 0.9]))


def test_robust_radius_and_loss_by_hand() -> None:
    """One component per class, r+ only: p_0 = d_0, p_1 = d_1; the radius solves d_0 / t = d_1 t."""
    positive, negative = torch.eye(2), torch.zeros(2, 2)
    d = torch.tensor([[0.8, 0.2]])
    sigma = torch.tensor([2.0, 3.0])
    radius = robust_radius(d, positive, negative, torch.arange(2), torch.tensor([0]), sigma)
    expected = 2.0 * math.log(math.sqrt(0.8 / 0.2))  # min sigma * ln t, t^2 = d_0 / d_1
    assert radius.item() == pytest.approx(expected, rel=1e-5)
    wrong = robust_radius(d, positive, negative, torch.arange(2), torch.tensor([1]), sigma)
    assert wrong.item() == pytest.approx(-expected, rel=1e-5)
    assert robust_loss(radius, 2.0).item() == pytest.approx(2.0 - expected, rel=1e-5)
    assert robust_loss(radius, 0.5).item() == 0.0
    assert robust_loss(radius, None).item() == pytest.approx(-expected, rel=1e-5)
    # three classes: the nearest incorrect class decides (min over j)
    three = robust_radius(torch.tensor([[0.8, 0.4, 0.2]]), torch.eye(3), torch.zeros(3, 3), torch.arange(3),
                          torch.tensor([0]), torch.tensor([2.0, 3.0, 4.0]))
    assert three.item() == pytest.approx(2.0 * math.log(math.sqrt(0.8 / 0.4)), rel=1e-5)


class _Shallow(RobustCBC):
    """RobustCBC on vectors: the input is the latent grid itself (a 1x1 grid), so the certificate is input L2."""

    def __init__(self, components: torch.Tensor, sigma: torch.Tensor, logits: torch.Tensor):
        torch.nn.Module.__init__(self)
        self.squared = False
        self.num_classes = logits.shape[1]
        self.head = ReasoningHead(len(components), self.num_classes)
        with torch.no_grad():
            self.head.weights.copy_(logits)
        self.components = torch.nn.Parameter(components)
        self.raw_sigma = torch.nn.Parameter(sigma)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, None, None]


def _shallow_model(seed: int = 0) -> _Shallow:
    generator = torch.Generator().manual_seed(seed)
    components = torch.randn(6, 4, generator=generator)
    sigma = 0.5 + torch.rand(6, generator=generator)
    logits = 3 * torch.randn(12, 3, generator=generator)
    return _Shallow(components, sigma, logits)


def _pgd_flips(model: _Shallow, x: torch.Tensor, radius: torch.Tensor, restarts: int, steps: int = 60) -> torch.Tensor:
    """Whether L2 PGD (random starts in the ball) finds a point within ``radius`` [B] that changes the class."""
    predicted = model(x).argmax(1)
    flipped = torch.zeros(len(x), dtype=torch.bool)
    generator = torch.Generator().manual_seed(1)
    for _ in range(restarts):
        delta = torch.randn(x.shape, generator=generator)
        delta = delta / delta.norm(dim=1, keepdim=True) * radius[:, None] * torch.rand(len(x), 1, generator=generator)
        for _ in range(steps):
            delta.requires_grad_(True)
            p = model.explain(x + delta).extra["probabilities"]
            others = p.masked_fill(torch.nn.functional.one_hot(predicted, p.shape[1]).bool(), -1.0)
            gap = others.amax(1) - p.gather(1, predicted[:, None])[:, 0]
            (grad,) = torch.autograd.grad(gap.sum(), delta)
            with torch.no_grad():
                step = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius[:, None] * 0.1
                delta = delta + step
                norm = delta.norm(dim=1, keepdim=True)
                delta = delta * torch.clamp(radius[:, None] / norm.clamp_min(1e-12), max=1.0)
        with torch.no_grad():
            flipped |= model(x + delta).argmax(1) != predicted
    return flipped


def _certified_points(model: _Shallow) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(2)) * 1.5
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(1)
        radius = model.certified_margin(x, predicted)
    keep = radius > 1e-3
    return x[keep], radius[keep]


def test_certified_radius_is_a_lower_bound_under_pgd() -> None:
    model = _shallow_model()
    x, radius = _certified_points(model)
    assert len(x) >= 20
    assert not _pgd_flips(model, x, radius * 0.999, restarts=5).any()


@pytest.mark.slow
def test_certified_radius_survives_many_restarts_and_is_not_vacuous() -> None:
    for seed in range(3):
        model = _shallow_model(seed)
        x, radius = _certified_points(model)
        assert not _pgd_flips(model, x, radius * 0.999, restarts=40).any()
        # just outside (a few radii: Thm. 1 bounds every distance moving at once) PGD often succeeds
        outside = _pgd_flips(model, x, radius * 1.5, restarts=5) | _pgd_flips(model, x, radius * 3.0, restarts=5)
        assert outside.float().mean() > 0.3


def test_conformance_kit_passes() -> None:
    assert check_model("cbc") == []


@pytest.mark.slow
def test_conformance_kit_passes_robust() -> None:
    assert check_model("cbc-robust") == []


def test_certificate_budgets_are_fractions_of_the_latent_scale_set_before_training() -> None:
    from protobench_cbc.recipe import init_components

    model = _shallow_model()
    model.register_buffer("latent_scale", torch.tensor(1.0))
    latents = 2 * torch.randn(10, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    init_components(model, latents)
    scale = latents.pow(2).sum(1).mean().sqrt().item()  # RMS L2 norm of a latent cell
    assert model.latent_scale.item() == pytest.approx(scale, rel=1e-6)
    certificate = model.certificate
    assert certificate["space"] == "feature"
    assert certificate["epsilons"] == pytest.approx([scale * k / 255 for k in (1, 2, 4, 8)], rel=1e-6)


def test_robust_objective_on_cached_latents_equals_the_one_on_images() -> None:
    from protobench_cbc.recipe import robust_objective

    model = _shallow_model()
    x, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(4)), torch.arange(8) % 3
    from_images = robust_objective(model, {"image": x, "label": y}, 1.58)
    from_latents = robust_objective(model, {"image": torch.zeros(8, 0), "latent": model.latent(x), "label": y}, 1.58)
    assert torch.allclose(from_images[0], from_latents[0])
    assert torch.allclose(from_images[1]["robust"], from_latents[1]["robust"])
