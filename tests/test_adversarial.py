"""PGD / FGSM robust accuracy against closed-form answers on linear models, and against torchattacks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.metrics.adversarial import (
    ADVERSARIAL_METRICS,
    AUTOATTACK,
    EPSILONS,
    PGD_STEP_FRACTION,
    PGD_STEPS,
    fgsm,
    pgd,
    uniform_noise,
)
from protobench.metrics.resampled import percentile_interval, poisson_counts

SHAPE = (1, 2, 3)  # six pixels


class Logits(PrototypeModel):
    """A prototype-less model whose logits are ``logits(x)``."""

    def __init__(self, num_classes: int, logits):
        super().__init__()
        self.num_classes, self.input_size, self.config = num_classes, SHAPE[1:], {}
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))
        self.logits = logits

    def explain(self, x: torch.Tensor) -> Explanation:
        return Explanation(logits=self.logits(x), similarities=x.new_zeros(len(x), 0, 1, 1))


class Linear(Logits):
    """Logits ``W x + b`` over the flattened image."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__(len(weight), lambda x: x.flatten(1) @ self.weight.T + self.bias)
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)


def linear_problem(n: int = 40, seed: int = 0):
    # Logit gaps stay within a few units: far from float32 softmax saturation, where the cross-entropy
    # gradient of a two-class model loses its direction.
    # The bias puts the decision boundary through the middle of the image cube, so that some images lie
    # within reach of every epsilon.
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(2, 6, generator=g) * 3
    model = Linear(weight, -weight.sum(dim=1) / 2 + torch.randn(2, generator=g) * 0.1)
    images = torch.rand(n, *SHAPE, generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    return model, images, labels


def margin(model: Linear, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logit of the label minus the other logit."""
    logits = model(images)
    return (logits.gather(1, labels[:, None]) - logits.gather(1, 1 - labels[:, None]))[:, 0]


def closed_form(model: Linear, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """The L-inf optimal attack on a two-class linear model: x - eps * sign(w_y - w_other), clipped to [0, 1]."""
    d = model.weight[labels] - model.weight[1 - labels]
    return (images - eps * d.sign().reshape(images.shape)).clamp(0, 1).detach()


def bootstrap_interval(index: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, seed: int):
    """The expected interval of a ratio of per-image sums: each resample weights image ``index[i]`` by its Poisson
    count (:func:`protobench.metrics.resampled.poisson_counts`); resamples with a zero denominator are undefined."""
    counts = poisson_counts(index, seed)[1:]
    return percentile_interval((counts @ numerator.double() / (counts @ denominator.double())).tolist())


def batch(images, labels, indices=None) -> dict:
    indices = torch.arange(len(images)) if indices is None else indices
    return {"image": images, "label": labels, "index": indices}


def run(spec, model: PrototypeModel, batches: list[dict], seed: int = 0):
    metric = spec.compute(model, EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu"), seed=seed))
    for b in batches:
        with torch.no_grad():  # as the harness: explained outside autograd, and updated without it
            metric.update(b, model.explain(b["image"]))
    return metric.compute()


SPECS = {spec.name: spec for spec in ADVERSARIAL_METRICS}


@pytest.mark.parametrize("eps", EPSILONS)
def test_pgd_and_fgsm_reach_the_closed_form_margin_of_a_linear_model(eps):
    model, images, labels = linear_problem()
    best = margin(model, closed_form(model, images, labels, eps), labels)
    start = uniform_noise(torch.arange(len(images)), SHAPE, eps, seed=3, stream=(0,))
    for adv in (pgd(model, images, labels, eps, start=start), fgsm(model, images, labels, eps)):
        assert torch.allclose(margin(model, adv, labels), best, atol=1e-5)
        assert (adv - images).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert (margin(model, images, labels) - best).min() > 0  # the attack does lower every margin


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_robust_accuracy_counts_what_the_closed_form_attack_leaves_correct(attack):
    model, images, labels = linear_problem(n=60, seed=1)
    clean = margin(model, images, labels) > 0
    for eps in EPSILONS:
        expected = (clean & (margin(model, closed_form(model, images, labels, eps), labels) > 0)).sum().item()
        result = run(SPECS[f"{attack}_eps{round(eps * 255)}"], model, [batch(images[:25], labels[:25], torch.arange(25)),
                                                                    batch(images[25:], labels[25:], torch.arange(25, 60))])
        assert result.value == expected / 60
        assert result.detail["clean_accuracy"] == clean.sum().item() / 60
    assert 0 < expected < clean.sum().item()  # at 8/255 the attack breaks some images and not others


def test_a_model_that_ignores_its_input_keeps_its_clean_accuracy():
    bias = nn.Parameter(torch.tensor([0.2, 1.0, -0.5]))
    constant = Logits(3, lambda x: bias.detach().expand(len(x), 3))  # no graph at all
    with_parameter = Logits(3, lambda x: bias.expand(len(x), 3))  # a graph that does not reach the input
    images, labels = torch.rand(9, *SHAPE), torch.arange(9) % 3
    for model in (constant, with_parameter):
        for spec in ADVERSARIAL_METRICS:
            result = run(spec, model, [batch(images, labels)])
            assert result.value == result.detail["clean_accuracy"] == 3 / 9


def mlp(seed: int = 0) -> Logits:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    model = Logits(3, net)
    model.net = net
    return model.eval()


def test_pgd_random_start_depends_on_the_image_not_on_batching_or_order():
    model = mlp()
    g = torch.Generator().manual_seed(5)
    images = torch.rand(20, *SHAPE, generator=g)
    labels = model(images).argmax(dim=1)  # all correct: every image is attacked
    order = torch.randperm(20, generator=g)
    whole = run(SPECS["pgd_eps8"], model, [batch(images, labels)], seed=7)
    split = run(SPECS["pgd_eps8"], model, [batch(images[order[:7]], labels[order[:7]], order[:7]),
                                           batch(images[order[7:]], labels[order[7:]], order[7:])], seed=7)
    assert whole.value == split.value and whole.detail["per_class"] == split.detail["per_class"]
    assert 0 < whole.value < 1
    noise = uniform_noise(torch.tensor([4, 2]), SHAPE, 0.1, seed=7, stream=(1, 8))
    assert torch.equal(noise[1], uniform_noise(torch.tensor([2]), SHAPE, 0.1, seed=7, stream=(1, 8))[0])
    assert noise.abs().max() <= 0.1 and not torch.equal(noise[0], noise[1])


def test_robust_accuracy_has_a_bootstrap_interval_that_does_not_depend_on_batching():
    model, images, labels = linear_problem(n=60, seed=1)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(2))
    robust = (margin(model, images, labels) > 0) & (margin(model, closed_form(model, images, labels, 8 / 255), labels) > 0)
    expected = bootstrap_interval(torch.arange(60), robust, torch.ones(60), seed=5)
    for name in ("fgsm_eps8", "pgd_eps8"):
        whole = run(SPECS[name], model, [batch(images, labels)], seed=5)
        split = run(SPECS[name], model, [batch(images[order[:23]], labels[order[:23]], order[:23]),
                                         batch(images[order[23:]], labels[order[23:]], order[23:])], seed=5)
        assert 0 < whole.value < whole.detail["clean_accuracy"] < 1  # some images broken, some not
        low, high = whole.interval
        assert low <= whole.value <= high and low < high
        assert whole.interval == pytest.approx(expected, abs=1e-12)
        assert split.value == whole.value and split.interval == whole.interval
        assert run(SPECS[name], model, [batch(images, labels)], seed=6).interval != whole.interval  # the run's seed


def test_metric_names_are_one_column_per_attack_and_epsilon_and_autoattack_is_not_default():
    assert sorted(SPECS) == sorted(f"{a}_eps{k}" for a in ("pgd", "fgsm") for k in (1, 2, 4, 8))
    assert all("/" not in name for name in SPECS)
    assert AUTOATTACK.name == "autoattack_eps8" and not AUTOATTACK.default and AUTOATTACK not in ADVERSARIAL_METRICS


def test_pgd_and_fgsm_equal_torchattacks_on_a_nonlinear_model():
    torchattacks = pytest.importorskip("torchattacks", reason="the PGD/FGSM/AutoAttack cross-check needs torchattacks (the dev extra)")
    model = mlp(1)
    images = torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(3))
    eps = 8 / 255
    reference = torchattacks.FGSM(model, eps=eps)(images, labels)
    assert torch.allclose(fgsm(model, images, labels, eps), reference, atol=1e-7)
    reference = torchattacks.PGD(model, eps=eps, alpha=eps * PGD_STEP_FRACTION, steps=PGD_STEPS,
                                 random_start=False)(images, labels)
    assert torch.allclose(pgd(model, images, labels, eps), reference, atol=1e-7)


def linear_robust(model: Linear, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact robustness of a multi-class linear model: every gap to another class stays positive at its own
    L-inf optimum (the ball is a box, so each gap is minimised independently, as in :func:`closed_form`)."""
    w, b = model.weight.detach(), model.bias.detach()
    d = w[labels][:, None, :] - w[None]  # [n, C, D]
    worst = (images.flatten(1)[:, None, :] - eps * d.sign()).clamp(0, 1)
    gaps = (d * worst).sum(dim=-1) + b[labels][:, None] - b[None]
    gaps[torch.arange(len(labels)), labels] = float("inf")
    return gaps.min(dim=1).values > 0


@pytest.mark.slow
def test_autoattack_robust_accuracy_equals_the_exact_count_of_a_linear_model():
    pytest.importorskip("torchattacks", reason="the PGD/FGSM/AutoAttack cross-check needs torchattacks (the dev extra)")
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(4, 6, generator=g) * 3
    model = Linear(weight, -weight.sum(dim=1) / 2)  # AutoAttack's targeted DLR loss needs 4 classes
    images, labels = torch.rand(24, *SHAPE, generator=g), torch.randint(0, 4, (24,), generator=g)
    clean = model(images).argmax(dim=1) == labels
    expected = (clean & linear_robust(model, images, labels, 8 / 255)).sum().item()
    assert 0 < expected < clean.sum().item()
    assert run(AUTOATTACK, model, [batch(images, labels)]).value == expected / 24
