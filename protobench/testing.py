"""The conformance kit: check a registered model against the contract (DESIGN.md) in one call.

For a plugin's own tests::

    from protobench.testing import check_model

    def test_my_model_keeps_the_contract():
        assert check_model("mymodel") == []

or, with the pytest plugin this module is (entry point ``pytest11``), ``pytest --protobench-model mymodel``.
Each problem is one line saying what the contract expects and what the model gave.
"""

from __future__ import annotations

import math
import tempfile
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from protobench.api.conformance import problems
from protobench.api.contract import MetricResult, TrainData
from protobench.api.plugins import Registry
from protobench.api.plugins import registry as installed
from protobench.data.transforms import eval_transform, train_transform
from protobench.runner import checkpoint, harness

#: A few synthbirds images: 3 classes, 2 training and 2 test images each, at 32 px.
TINY = {"num_classes": 3, "images_per_class": 4, "test_fraction": 0.5, "resolution": 32}


def first_batches(iterable: Iterable[Any], *, desc: str = "", total: int | None = None) -> Iterator[Any]:
    """A progress factory that stops every loop it wraps after one item: one step per epoch and phase."""
    for item in iterable:
        yield item
        return


def _quiet(iterable: Iterable[Any], *, desc: str = "", total: int | None = None) -> Iterable[Any]:
    return iterable


def _raised(what: str, exc: Exception) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{what} raised {type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"


def check_model(name: str, registry: Registry | None = None, profile: str = "quick", metrics: bool = True,
                train: bool = True) -> list[str]:
    """Every way model ``name`` breaks the contract on :data:`TINY` synthbirds, one line each (empty: none).

    Builds it from ``profile``'s config (backbone weights off), then checks the attributes and ``explain``
    (:func:`protobench.api.conformance.problems`), that ``forward`` returns ``explain``'s logits, that eval mode is
    deterministic, that the safetensors checkpoint round-trips, that every default metric computes a finite
    value or None, and, if the plugin has a recipe, one step per epoch and phase of it.
    """
    reg = registry or installed()
    with tempfile.TemporaryDirectory() as workdir:
        settings = harness.Settings(profile=profile, workdir=Path(workdir), device="cpu", dataset_options=TINY)
        spec = reg.model(name)
        test_set = harness.build_split(reg, settings, "test", None)
        config = {**harness.identity(reg, name, settings).config, "num_classes": test_set.num_classes}
        if "weights" in config:
            config["weights"] = None
        try:
            model = spec.build(config)
        except Exception as exc:  # noqa: BLE001 - the kit reports what a plugin raises, whatever it is
            return [_raised("build(config)", exc)]
        found = problems(model, test_set.num_classes)
        if found:
            return found
        size = harness._input_size(config)
        test = harness.build_split(reg, settings, "test", eval_transform(size))
        found += _check_passes(model, name, test, reg, Path(workdir))
        if metrics:
            found += _check_metrics(model, name, test, reg, settings)
        if train and spec.train is not None:
            found += _check_training(spec, config, reg, settings, size)
    return found


def _check_passes(model: Any, name: str, test: Any, reg: Registry, workdir: Path) -> list[str]:
    found = []
    x = torch.stack([test[i]["image"] for i in range(min(4, len(test)))])
    model.eval()
    with torch.no_grad():
        first, second, logits = model.explain(x), model.explain(x), model(x)
    if not (torch.equal(first.logits, second.logits) and torch.equal(first.similarities, second.similarities)):
        # the comparisons below would all fail with it
        return [("explain(x) in eval mode gave different outputs on the same images: the contract expects eval mode "
                 "to be deterministic")]
    if not torch.equal(logits, first.logits):
        found.append("forward(x) differs from explain(x).logits: the contract expects forward to return them")
    try:
        checkpoint.save(model, name, workdir / "roundtrip")
        loaded = checkpoint.load(workdir / "roundtrip", reg)
        with torch.no_grad():
            again = loaded.explain(x)
        if not torch.allclose(again.logits, first.logits, atol=1e-5):
            found.append("a model saved and loaded through safetensors + json gives other logits: the contract "
                         "expects the state dict and config to rebuild it")
    except Exception as exc:  # noqa: BLE001 - reported as the model's problem
        found.append(_raised("the checkpoint round trip (save, then build(config) and load_state_dict)", exc))
    return found


def _check_metrics(model: Any, name: str, test: Any, reg: Registry, settings: harness.Settings) -> list[str]:
    found = []
    for spec in (s for s in reg.metrics.values() if s.default):
        try:
            ((_, result, _),) = harness._shared_pass(model, name, test, [spec], settings, torch.device("cpu"),
                                                      0, 1, None, _quiet)
        except Exception as exc:  # noqa: BLE001 - reported as the model's problem
            found.append(_raised(f"metric {spec.name!r}", exc))
            continue
        value = result.value if isinstance(result, MetricResult) else result
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            found.append(f"metric {spec.name!r} gave {value!r}: the contract expects a finite number or None")
    return found


def _check_training(spec: Any, config: dict[str, Any], reg: Registry, settings: harness.Settings,
                    size: int | tuple[int, int]) -> list[str]:
    data = TrainData(train=harness.build_split(reg, settings, "train", train_transform(size, 0)),
                     push=harness.build_split(reg, settings, "train", eval_transform(size)),
                     test=harness.build_split(reg, settings, "test", eval_transform(size)),
                     num_classes=TINY["num_classes"])
    try:
        trained = spec.train(spec.build(config), data, config, first_batches)
    except Exception as exc:  # noqa: BLE001 - reported as the model's problem
        return [_raised("the training recipe (one step per epoch and phase)", exc)]
    return [f"after training: {line}" for line in problems(trained, data.num_classes)]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--protobench-model", action="append", default=[], metavar="NAME",
                     help="check the registered protobench model NAME against the contract (repeatable)")


class ConformanceItem(pytest.Item):
    """One model's conformance check, as a test item."""

    def runtest(self) -> None:
        found = check_model(self.model)
        if found:
            raise AssertionError("\n".join(found))

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, AssertionError):
            return f"{self.name} breaks the contract:\n" + str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[str, int | None, str]:
        return "protobench.testing", None, self.name


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for name in config.getoption("--protobench-model"):
        item = ConformanceItem.from_parent(session, name=f"protobench-conformance[{name}]")
        item.model = name
        items.append(item)
