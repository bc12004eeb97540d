"""The conformance kit (``protobench.testing``): every built-in model passes it, and it catches planted faults."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from protobench.api.contract import Explanation, ModelSpec, PrototypeModel
from protobench.api.plugins import Registry, registry
from protobench.testing import check_model, first_batches


@pytest.mark.parametrize("name", sorted(registry().models))
def test_every_built_in_model_passes_the_kit(name):
    assert check_model(name) == []


class Faulty(PrototypeModel):
    """Two prototypes per class on a 2x2 grid, with one planted fault (``config["fault"]``)."""

    def __init__(self, config):
        super().__init__()
        fault = config["fault"]
        if fault != "no_config":
            self.config = dict(config)
        self.num_classes, self.input_size, self.fault = config["num_classes"], (32, 32), fault
        classes = torch.arange(2 * self.num_classes) // 2
        if fault == "classes_range":
            classes[-1] = self.num_classes
        self.register_buffer("prototype_classes", classes)
        self.head = nn.Linear(3, self.num_classes)
        self.scale = torch.rand(1) + 1 if fault == "roundtrip" else torch.ones(1)  # not in the state dict

    def explain(self, x):
        logits = self.head(x.mean((2, 3))) * self.scale
        if self.fault == "logits":
            logits = logits[:, 1:]
        if self.fault == "nondeterministic":
            logits = logits + 1e-3 * torch.rand_like(logits)
        grid = (3, 3) if self.fault == "similarities" else (2, 2)
        sims = x.new_ones(len(x), self.num_prototypes * (2 if self.fault == "similarities" else 1), *grid)
        return Explanation(logits=logits, similarities=sims)


FAULTS = {
    "logits": "explain(x).logits has shape [2, 2] for B=2, P=6, C=3: the contract expects [2, 3]",
    "similarities": "explain(x).similarities has shape [2, 12, 3, 3] for B=2, P=6, C=3",
    "classes_range": "prototype_classes holds 0..3: the contract expects values in -1..2",
    "no_config": "has no 'config'",
    "nondeterministic": "explain(x) in eval mode gave different outputs on the same images",
    "roundtrip": "a model saved and loaded through safetensors + json gives other logits",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_the_kit_catches_each_planted_fault_in_one_line(fault):
    torch.manual_seed(0)
    spec = ModelSpec(name="faulty", build=Faulty, train=None, paper="", default_config={"fault": fault})
    reg = Registry(models={"faulty": spec}, datasets=dict(registry().datasets))
    found = check_model("faulty", reg, metrics=False)
    assert len(found) == 1 and found[0].startswith(FAULTS[fault]), found


def test_a_clean_model_passes_and_a_raising_recipe_is_reported():
    spec = ModelSpec(name="faulty", build=Faulty, train=None, paper="", default_config={"fault": ""})
    reg = Registry(models={"faulty": spec}, datasets=dict(registry().datasets), metrics=dict(registry().metrics))
    assert check_model("faulty", reg) == []

    def boom(model, data, config, progress):
        raise RuntimeError("no optimiser")

    reg.models["faulty"] = ModelSpec(name="faulty", build=Faulty, train=boom, paper="", default_config={"fault": ""})
    (line,) = check_model("faulty", reg, metrics=False)
    assert line.startswith("the training recipe (one step per epoch and phase) raised RuntimeError: no optimiser")


def test_the_kits_progress_stops_every_loop_after_one_item():
    assert list(first_batches(range(5), desc="epoch")) == [0] and list(first_batches([])) == []


def test_the_pytest_plugin_checks_a_named_model(toy_cli):
    env = {**toy_cli.env, "PROTOBENCH_PLUGINS": "toy,core"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--protobench-model", "toy_a"]
    done = subprocess.run(cmd, check=False, cwd=toy_cli.cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-2000:]
    done = subprocess.run(cmd, check=False, cwd=toy_cli.cwd, env={**env, "TOY_FAIL": "toy_a:logits"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    assert "protobench-conformance[toy_a] breaks the contract:\nexplain(x).logits has shape [2, 2]" in done.stdout
