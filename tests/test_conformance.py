"""The contract check run on every freshly built model: each planted fault gets one line saying what is expected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from protobench.api.conformance import problems
from protobench.api.contract import DatasetSpec, Explanation, ModelSpec, PrototypeModel
from protobench.api.plugins import Registry
from protobench.runner import harness


class Good(PrototypeModel):
    """3 classes, 2 prototypes on a 2x2 grid; ``fault`` breaks one thing."""

    def __init__(self, fault: str = ""):
        super().__init__()
        self.num_classes, self.input_size, self.fault = 3, (8, 8), fault
        if fault != "no_config":
            self.config = {"fault": fault, "path": object()} if fault == "config_json" else {"fault": fault}
        classes = {"classes_range": [0, 3], "classes_float": [0.0, 1.0]}.get(fault, [0, 1])
        self.register_buffer("prototype_classes", torch.tensor(classes))
        self.head = nn.Linear(3, 3)

    def explain(self, x: torch.Tensor) -> Explanation:
        b = len(x)
        logits = self.head(x.mean((2, 3)))
        sims = x.new_ones(b, 2, 2, 2)
        if self.fault == "logits":
            logits = logits[:, :2]
        if self.fault == "similarities":
            sims = x.new_ones(b, 2, 4)
        if self.fault == "prototype_count":
            sims = x.new_ones(b, 5, 2, 2)
        if self.fault == "nan":
            logits = logits * float("nan")
        if self.fault == "int_logits":
            logits = logits.long()
        contributions = x.new_ones(b, 2, 2) if self.fault == "contributions" else x.new_ones(b, 2, 3)
        return Explanation(logits=logits, similarities=sims, contributions=contributions)


def test_a_model_that_keeps_the_contract_has_no_problems():
    assert problems(Good(), 3) == []


@pytest.mark.parametrize("fault, expected", [
    ("logits", "explain(x).logits has shape [2, 2] for B=2, P=2, C=3: the contract expects [2, 3]"),
    ("similarities", ("explain(x).similarities has shape [2, 2, 4] for B=2, P=2, C=3: the contract expects "
                     "[B, P, h, w]")),
    ("prototype_count", "explain(x).similarities has shape [2, 5, 2, 2] for B=2, P=2, C=3"),
    ("contributions", ("explain(x).contributions has shape [2, 2, 2] for B=2, P=2, C=3: the contract expects "
                      "[2, 2, 3]")),
    ("nan", "explain(x).logits holds non-finite values"),
    ("int_logits", "explain(x).logits is (2, 3) int64: the contract expects a float tensor"),
    ("classes_range", "prototype_classes holds 0..3: the contract expects values in -1..2"),
    ("classes_float", "prototype_classes is (2,) float32: the contract expects a LongTensor[P]"),
    ("no_config", "has no 'config': the contract expects the json-serialisable dict"),
    ("config_json", "config is not json-serialisable"),
])
def test_each_planted_fault_gets_one_line(fault, expected):
    found = problems(Good(fault), 3)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_num_classes_must_be_the_datasets():
    assert problems(Good(), 4)[0].startswith("num_classes is 3: the contract expects the dataset's 4")


def test_a_plain_module_is_told_what_to_add():
    class Plain(nn.Module):
        num_classes, input_size, config = 3, (8, 8), {}

        def __init__(self):
            super().__init__()
            self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))

        def explain(self, x):
            return Explanation(logits=x.new_zeros(len(x), 3), similarities=x.new_zeros(len(x), 0, 1, 1))

    assert problems(Plain(), 3) == [("is a Plain, not a protobench.PrototypeModel: subclass PrototypeModel (or give "
                                    "it the property num_prototypes, the length of prototype_classes)")]
    Plain.num_prototypes = property(lambda self: 0)
    assert problems(Plain(), 3) == []  # it has every attribute the harness uses: it works
    assert problems(nn.Linear(2, 2), 3)[0].startswith("has no 'num_classes'")


def test_input_size_defaults_to_the_datasets_resolution():
    model = ModelSpec(name="m", build=None, train=None, paper="", default_config={"k": 1})

    def build(root, split, transform=None):
        return [{"image": torch.zeros(3, 5, 7), "label": 0, "index": 0}]

    reg = Registry(models={"m": model}, datasets={"d": DatasetSpec(name="d", build=build)})
    found = harness.identity(reg, "m", harness.Settings(dataset="d"))
    assert found.config["input_size"] == [5, 7] and found.changed == {}


def test_every_built_in_model_keeps_the_contract():
    from protobench.api.plugins import registry

    reg = registry()
    for name, spec in reg.models.items():
        config = {**spec.config("quick"), "num_classes": 24, "weights": None}
        assert problems(spec.build(config), 24) == [], name
