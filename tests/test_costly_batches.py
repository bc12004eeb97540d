"""Costly metrics are fed full batches gathered from the shared pass, and no metric's value depends on the
batch size (issue 18, part 3)."""

from __future__ import annotations

import math

import pytest
import torch

from protobench.api.contract import Explanation, MetricResult, MetricSpec, PrototypeModel
from protobench.api.plugins import registry
from protobench.runner import harness

QUIET = lambda it, desc="", total=None: it


def pair(indices: list[int]) -> tuple[dict, Explanation]:
    """A batch and its explanation whose every row is tagged with its dataset index."""
    index = torch.tensor(indices, dtype=torch.long)
    batch = {"index": index, "image": index.float()[:, None, None, None].expand(-1, 3, 2, 2),
             "path": [f"img{i}.png" for i in indices], "split": "test"}
    out = Explanation(logits=index.float()[:, None].repeat(1, 2), similarities=index.float()[:, None, None, None],
                      contributions=None, extra={"rank": -index})
    return batch, out


def test_rebatcher_yields_full_batches_of_the_rows_in_order():
    rebatcher = harness.Rebatcher(4)
    seen = []
    for indices in ([0], [], [1, 2], [3, 4, 5], [6], [7, 8, 9, 10, 11, 12, 13], [14]):
        rebatcher.add(*pair(indices))
        seen += list(rebatcher.full())
    rest = list(rebatcher.rest())
    assert [len(b["index"]) for b, _ in seen] == [4, 4, 4] and [len(b["index"]) for b, _ in rest] == [3]
    rows = torch.cat([b["index"] for b, _ in seen + rest])
    assert rows.tolist() == list(range(15))
    for batch, out in seen + rest:  # every field follows its rows
        assert torch.equal(out.logits[:, 1], batch["index"].float())
        assert torch.equal(out.similarities.flatten(), batch["index"].float())
        assert torch.equal(out.extra["rank"], -batch["index"])
        assert torch.equal(batch["image"][:, 0, 0, 0], batch["index"].float())
        assert batch["path"] == [f"img{i}.png" for i in batch["index"].tolist()]
        assert batch["split"] == "test" and out.contributions is None
    assert list(rebatcher.rest()) == []


def test_rebatcher_refuses_an_empty_batch_size():
    with pytest.raises(ValueError, match="at least 1"):
        harness.Rebatcher(0)


class Indexed(PrototypeModel):
    """Logits that name the image (its mean pixel), one 1x1 similarity map."""

    def __init__(self):
        super().__init__()
        self.num_classes, self.input_size, self.config = 2, (2, 2), {}
        self.register_buffer("prototype_classes", torch.zeros(1, dtype=torch.long))

    def explain(self, x):
        m = x.mean(dim=(1, 2, 3))
        return Explanation(logits=torch.stack([m, -m], dim=1), similarities=m[:, None, None, None])


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return {"image": torch.full((3, 2, 2), float(i)), "label": i % 2, "index": i}


class Recorder:
    """Records the dataset indices of every update."""

    def __init__(self):
        self.updates: list[list[int]] = []

    def update(self, batch, explanation):
        assert torch.equal(explanation.logits[:, 0], batch["index"].float())
        self.updates.append(batch["index"].tolist())

    def compute(self):
        return MetricResult(value=0.0, detail={"updates": self.updates})


def test_costly_metrics_get_the_subset_in_full_batches_and_cheap_ones_every_batch():
    costly = torch.zeros(20, dtype=torch.bool)
    costly[[1, 6, 7, 12, 18]] = True  # spread over the loader's batches 0, 1, 1, 3, 4 (of 4 images)
    specs = [MetricSpec(name="cheap", compute=lambda m, c: Recorder()),
             MetricSpec(name="costly", compute=lambda m, c: Recorder(), costly=True)]
    out = harness._shared_pass(Indexed(), "indexed", Items(), specs, harness.Settings(batch_size=4, seed=0),
                               torch.device("cpu"), 0, 1, costly, QUIET)
    updates = {spec.name: result.detail["updates"] for spec, result, _ in out}
    assert updates["cheap"] == [list(range(i, i + 4)) for i in range(0, 20, 4)]
    assert updates["costly"] == [[1, 6, 7, 12], [18]]


@pytest.fixture(scope="module")
def small_protopnet() -> tuple[PrototypeModel, torch.utils.data.Dataset]:
    reg = registry()
    data = {"num_classes": 3, "images_per_class": 10, "resolution": 32, "test_fraction": 0.4}
    dataset = reg.dataset("synthbirds").build(None, "test", None, **data)
    spec = reg.model("protopnet")
    config = {**spec.config("quick"), "weights": None, "num_classes": 3, "input_size": 32,
              "prototypes_per_class": 2}
    torch.manual_seed(0)
    return spec.build(config).eval(), dataset


def _values(model, dataset, batch_size: int, costly: torch.Tensor) -> dict[str, object]:
    reg = registry()
    specs = [spec for name, spec in sorted(reg.metrics.items()) if spec.default]
    torch.manual_seed(0)
    out = harness._shared_pass(model, "protopnet", dataset, specs, harness.Settings(batch_size=batch_size, seed=0),
                               torch.device("cpu"), 0, 1, costly, QUIET)
    return {spec.name: (result.value, result.interval) for spec, result, reason in out if reason is None}


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return all(_close(x, y) for x, y in zip(a, b))
    return a == b


def test_every_default_metric_is_the_same_in_one_batch_or_many(small_protopnet):
    model, dataset = small_protopnet  # 12 test images
    costly = harness.costly_subset(dataset, 5)
    whole = _values(model, dataset, 12, costly)
    assert {"accuracy", "consistency", "object_relevance", "pgd_eps2"} <= set(whole)
    # every applicable default metric carries its bootstrap interval around its value
    without = {k for k, (value, interval) in whole.items() if value is not None and interval is None}
    assert not without, f"no interval: {without}"
    outside = {k: v for k, v in whole.items() if v[0] is not None and not v[1][0] - 1e-9 <= v[0] <= v[1][1] + 1e-9}
    assert not outside, f"value outside its interval: {outside}"
    for batch_size in (5, 1):
        values = _values(model, dataset, batch_size, costly)
        differ = {k: (whole[k], values[k]) for k in whole if not _close(whole[k], values[k])}
        assert not differ, f"batch size {batch_size} changes {differ}"
