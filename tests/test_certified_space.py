"""certified_accuracy with a model that certifies in its feature space (declared ``certificate``)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.metrics.adversarial import EPSILONS
from protobench.metrics.certified import CERTIFIED_ACCURACY
from protobench.metrics.resampled import percentile_interval, poisson_counts


class KnownMargin(PrototypeModel):
    """Two classes; the image's first pixel is its certified margin (in made-up feature units), its second
    pixel decides the class (> 0.5: class 1)."""

    def __init__(self, certificate: dict | None):
        super().__init__()
        self.num_classes, self.input_size, self.config = 2, (1, 2), {}
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))
        if certificate is not None:
            self.certificate = certificate

    def explain(self, x: torch.Tensor) -> Explanation:
        f = x.flatten(1)[:, 1] - 0.5
        return Explanation(logits=torch.stack([-f, f], dim=1), similarities=x.new_zeros(len(x), 0, 1, 1))

    def certified_margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, 0]


# margins 0.3, 0.7, 1.5, 3.0, 3.0 (the last misclassified), 0.05
IMAGES = torch.tensor([[0.3, 0.9], [0.7, 0.9], [1.5, 0.1], [3.0, 0.1], [3.0, 0.9], [0.05, 0.9]]).view(6, 1, 1, 2)
LABELS = torch.tensor([1, 1, 0, 0, 0, 1])


def bootstrap_interval(index: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, seed: int):
    """The expected interval of a ratio of per-image sums: each resample weights image ``index[i]`` by its Poisson
    count (:func:`protobench.metrics.resampled.poisson_counts`); resamples with a zero denominator are undefined."""
    counts = poisson_counts(index, seed)[1:]
    return percentile_interval((counts @ numerator.double() / (counts @ denominator.double())).tolist())


def _run(model: KnownMargin):
    metric = CERTIFIED_ACCURACY.compute(model, EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu")))
    metric.update({"image": IMAGES, "label": LABELS, "index": torch.arange(6)}, model.explain(IMAGES))
    return metric.compute()


def test_feature_space_certificate_uses_the_models_epsilons_and_reports_its_space() -> None:
    model = KnownMargin({"space": "feature", "norm": "l2", "epsilons": (1.0, 0.25, 2.0)})
    result = _run(model)
    assert result.detail["space"] == "feature" and result.detail["norm"] == "l2"
    assert result.detail["epsilons"] == [0.25, 1.0, 2.0]
    # correct: images 0, 1, 2, 3, 5; margins >= 0.25: 0, 1, 2, 3; >= 1: 2, 3; >= 2: 3
    assert result.detail["per_epsilon"] == {"eps0.25": 4 / 6, "eps1": 2 / 6, "eps2": 1 / 6}
    assert result.value == 1 / 6 and result.detail["epsilon"] == 2.0
    assert result.detail["clean_accuracy"] == 5 / 6


def test_without_a_declaration_the_pixel_epsilons_and_input_space() -> None:
    result = _run(KnownMargin(None))
    assert result.detail["space"] == "input" and result.detail["epsilons"] == list(EPSILONS)
    # every correct image's margin (>= 0.05) exceeds 8/255 = 0.031
    assert result.value == 5 / 6 and set(result.detail["per_epsilon"]) == {"eps1", "eps2", "eps4", "eps8"}


def test_feature_space_without_epsilons_is_refused() -> None:
    try:
        _run(KnownMargin({"space": "feature", "norm": "l2"}))
    except ValueError as exc:
        assert "epsilons" in str(exc)
    else:
        raise AssertionError("a feature-space certificate without epsilons was accepted")


def test_feature_space_certified_accuracy_has_a_bootstrap_interval_that_does_not_depend_on_batching() -> None:
    model = KnownMargin({"space": "feature", "norm": "l2", "epsilons": (0.25, 1.0)})
    results = []
    for splits in ([torch.arange(6)], [torch.tensor([4, 1]), torch.tensor([0, 5, 3, 2])]):
        metric = CERTIFIED_ACCURACY.compute(model, EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu"),
                                                               seed=2))
        for index in splits:
            metric.update({"image": IMAGES[index], "label": LABELS[index], "index": index}, model.explain(IMAGES[index]))
        results.append(metric.compute())
    whole, split = results
    assert whole.value == 2 / 6  # images 2 and 3 certified at 1.0
    low, high = whole.interval
    assert low <= whole.value <= high and low < high
    certified = torch.tensor([0, 0, 1, 1, 0, 0])
    assert whole.interval == bootstrap_interval(torch.arange(6), certified, torch.ones(6), seed=2)
    assert split.value == whole.value and split.interval == whole.interval
