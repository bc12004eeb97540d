"""Certified robust accuracy against a brute-force search over the epsilon ball of a hand-built model."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.metrics.adversarial import EPSILONS
from protobench.metrics.certified import CERTIFIED_ACCURACY
from protobench.metrics.resampled import percentile_interval, poisson_counts
from protobench.runner import harness

WEIGHT = torch.tensor([1.0, -0.8])
BIAS = -0.1


class TwoPixels(PrototypeModel):
    """Two classes on 2-pixel images ``[B, 1, 1, 2]``: class 0 where ``f(x) = w.x + b > 0``."""

    def __init__(self, with_margin: bool = True):
        super().__init__()
        self.num_classes, self.input_size, self.config = 2, (1, 2), {}
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))
        if with_margin:
            self.certified_margin = self.exact_margin

    def explain(self, x: torch.Tensor) -> Explanation:
        f = x.flatten(1) @ WEIGHT + BIAS
        return Explanation(logits=torch.stack([f, -f], dim=1), similarities=x.new_zeros(len(x), 0, 1, 1))

    def exact_margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The exact L-inf distance to the decision boundary: ``|f(x)| / ||w||_1`` (the dual norm of L-inf)."""
        return (x.flatten(1) @ WEIGHT + BIAS).abs() / WEIGHT.abs().sum()


def ball(images: torch.Tensor, eps: float, points: int = 41) -> torch.Tensor:
    """``[N, points**2, 1, 1, 2]``: a grid over each image's L-inf ball, corners included."""
    steps = torch.linspace(-eps, eps, points)
    offsets = torch.cartesian_prod(steps, steps).reshape(1, -1, 1, 1, 2)
    return images[:, None] + offsets


def brute_force_certified(model: TwoPixels, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Images whose every grid point of the eps-ball is classified as their label."""
    grid = ball(images, eps)
    predictions = model(grid.reshape(-1, 1, 1, 2)).argmax(dim=1).reshape(len(images), -1)
    return (predictions == labels[:, None]).all(dim=1)


def bootstrap_interval(index: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, seed: int):
    """The expected interval of a ratio of per-image sums: each resample weights image ``index[i]`` by its Poisson
    count (:func:`protobench.metrics.resampled.poisson_counts`); resamples with a zero denominator are undefined."""
    counts = poisson_counts(index, seed)[1:]
    return percentile_interval((counts @ numerator.double() / (counts @ denominator.double())).tolist())


def data(n: int = 300, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 1, 2, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_the_model_margin_is_the_radius_a_brute_force_search_finds():
    model = TwoPixels()
    images, _ = data(60)
    prediction = model(images).argmax(dim=1)
    step, top = 0.002, 0.2
    radii = torch.arange(0, top + step / 2, step)
    holds = torch.stack([brute_force_certified(model, images, prediction, r) for r in radii.tolist()])
    first_failure = torch.where(holds.all(dim=0), len(radii), (~holds).int().argmax(dim=0))
    searched = radii[first_failure - 1]  # the largest radius on the grid at which the prediction holds
    exact = model.certified_margin(images, prediction)
    assert ((exact >= searched - 1e-6) & (exact.clamp(max=top) < searched + step)).all()
    assert (exact < top).sum() > 10  # most margins are inside the searched range


def run(model: TwoPixels, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    metric = CERTIFIED_ACCURACY.compute(model, EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu")))
    for images, labels in batches:
        with torch.no_grad():
            metric.update({"image": images, "label": labels, "index": torch.arange(len(images))},
                          model.explain(images))
    return metric.compute()


def test_certified_accuracy_counts_what_brute_force_certifies_at_every_epsilon():
    model = TwoPixels()
    images, labels = data()
    result = run(model, [(images[:128], labels[:128]), (images[128:], labels[128:])])
    expected = {f"eps{round(e * 255)}": brute_force_certified(model, images, labels, e).sum().item() / len(images)
                for e in EPSILONS}
    assert result.detail["per_epsilon"] == expected
    assert result.value == expected["eps8"] and result.detail["epsilon"] == 8 / 255
    clean = (model(images).argmax(dim=1) == labels).sum().item() / len(images)
    assert result.detail["clean_accuracy"] == clean
    assert clean > expected["eps1"] > expected["eps8"] > 0  # the epsilons matter on this data


def test_certified_accuracy_has_a_bootstrap_interval_that_does_not_depend_on_batching():
    model = TwoPixels()
    images, labels = data(80, seed=1)
    order = torch.randperm(80, generator=torch.Generator().manual_seed(2))
    results = []
    for splits in ([torch.arange(80)], [order[:31], order[31:]]):
        metric = CERTIFIED_ACCURACY.compute(model, EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu"),
                                                               seed=4))
        assert metric.seed == 4
        for index in splits:
            with torch.no_grad():
                metric.update({"image": images[index], "label": labels[index], "index": index},
                              model.explain(images[index]))
        results.append(metric.compute())
    whole, split = results
    assert 0 < whole.value < whole.detail["clean_accuracy"] < 1
    low, high = whole.interval
    assert low <= whole.value <= high and low < high
    certified = brute_force_certified(model, images, labels, 8 / 255)
    assert whole.interval == bootstrap_interval(torch.arange(80), certified, torch.ones(80), seed=4)
    assert split.value == whole.value and split.interval == whole.interval
    assert split.detail == whole.detail


def test_a_model_without_a_margin_is_not_applicable_and_one_with_it_is():
    images, _ = data(4)
    reason = harness._missing_capability(CERTIFIED_ACCURACY, TwoPixels(with_margin=False), None,
                                         TwoPixels().explain(images))
    assert reason == "the model gives no certified margin"
    assert harness._missing_capability(CERTIFIED_ACCURACY, TwoPixels(), None, TwoPixels().explain(images)) is None
