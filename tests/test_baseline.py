"""The black-box baseline: no prototypes, cross-entropy training through the shared trainer."""

from __future__ import annotations

import json

import torch
from protobench_baseline.plugin import SPEC
from tiny_data import ColourItems

from protobench.api.contract import TrainData
from protobench.api.plugins import discover
from protobench.runner import checkpoint


def tiny_config(**overrides):
    return SPEC.config("quick", **{"num_classes": 2, "input_size": 16, "backbone": "resnet10t", "output_stride": None, "weights": None,
                                   "epochs": 2, "batch_size": 8, **overrides})


def test_baseline_has_no_prototypes():
    model = SPEC.build(tiny_config())
    x = torch.rand(3, 3, 16, 16)
    out = model.explain(x)
    assert model.num_prototypes == 0 and model.prototype_classes.dtype == torch.long
    assert out.logits.shape == (3, 2) and out.similarities.shape == (3, 0, 1, 1)
    assert out.contributions is None
    assert torch.allclose(model(x), out.logits)


def test_baseline_trains_every_parameter_and_round_trips(tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    json.dumps(config)
    model = SPEC.build(config)
    before = {k: v.clone() for k, v in model.named_parameters()}
    data = TrainData(ColourItems(), ColourItems(), ColourItems(), 2)
    assert SPEC.train(model, data, config, lambda it, desc="", total=None: it) is model
    assert all(not torch.equal(v, before[k]) for k, v in model.named_parameters())
    checkpoint.save(model, "baseline", tmp_path)
    again = checkpoint.load(tmp_path, discover({"baseline"}))
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(again(x), model(x))


def test_profiles_carry_the_required_keys():
    for profile in ("quick", "paper"):
        assert {"backbone", "num_classes", "input_size"} <= set(SPEC.config(profile))
