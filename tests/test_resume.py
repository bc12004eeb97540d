"""Resumable training (issue 12, part 3): a run stopped at any phase or epoch boundary and run again ends
with the same model, bit for bit, as a run never stopped."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_data import ColourItems
from torch import nn

from protobench.api.contract import TrainData
from protobench.api.plugins import discover
from protobench.runner import harness, resume
from protobench.runner.training import (
    ParamGroup,
    Phase,
    Step,
    StepSchedule,
    cross_entropy_objective,
    run_recipe,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.head = nn.Linear(4, 2)
        self.register_buffer("pushes", torch.zeros(1))

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Stop(Exception):
    pass


def push(model, data, progress):
    """A step: changes the model from the data and draws from the global generator."""
    model.pushes += 1
    with torch.no_grad():
        model.head.bias += 0.01 * torch.randn(2)


def recipe():
    both = (ParamGroup("features", 1e-2), ParamGroup("head", 1e-2))
    return [Phase("warm", 2, (ParamGroup("head", 1e-2),), cross_entropy_objective, {"cross_entropy": 1.0}),
            Phase("joint", 3, both, cross_entropy_objective, {"cross_entropy": 1.0}, optimizer="joint",
                  schedule=StepSchedule(2, 0.5)),
            Step("push", push),
            Phase("joint again", 2, both, cross_entropy_objective, {"cross_entropy": 1.0}, optimizer="joint",
                  schedule=StepSchedule(2, 0.5))]


def train(resume_dir, stop_at: str | None = None):
    torch.manual_seed(0)
    model = Net()
    data = TrainData(*[ColourItems(24, size=8, noise=0.1)] * 3, 2, resume_dir=resume_dir)

    def progress(iterable, desc="", total=None):
        if desc == stop_at:
            raise Stop(desc)
        return iterable

    history = run_recipe(model, recipe(), data, progress, batch_size=8)
    return model, history


@pytest.mark.parametrize("stop_at", ["warm 2/2", "joint 1/3", "joint 3/3", "joint again 1/2", "joint again 2/2"])
def test_a_stopped_run_resumes_to_the_same_model(tmp_path, stop_at):
    reference, reference_log = train(None)
    with pytest.raises(Stop):
        train(tmp_path / "resume", stop_at)
    assert (tmp_path / "resume" / resume.LATEST).is_file()
    torch.manual_seed(123)  # the re-run's own seeding is replaced by the saved generators
    resumed, log = train(tmp_path / "resume")
    for name, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert resumed.pushes.item() == 1 and log == reference_log


def test_only_the_latest_state_is_kept_and_a_foreign_one_is_refused(tmp_path, capsys):
    train(tmp_path / "resume")
    assert [p.name for p in (tmp_path / "resume").glob("state-*")] == [
        json.loads((tmp_path / "resume" / resume.LATEST).read_text())["folder"]]
    torch.manual_seed(0)
    model = Net()
    data = TrainData(*[ColourItems(24, size=8, noise=0.1)] * 3, 2, resume_dir=tmp_path / "resume")
    phases = [Phase("other", 1, (ParamGroup("head", 1e-2),), cross_entropy_objective, {"cross_entropy": 1.0})]
    assert len(run_recipe(model, phases, data, lambda it, desc="", total=None: it, batch_size=8)) == 1
    assert "cannot resume" in (err := capsys.readouterr().err) and "saved by another recipe" in err


def test_a_torn_state_is_reported_and_training_starts_over(tmp_path, capsys):
    with pytest.raises(Stop):
        train(tmp_path / "resume", "joint 1/3")
    folder = json.loads((tmp_path / "resume" / resume.LATEST).read_text())["folder"]
    (tmp_path / "resume" / folder / resume.MODEL).write_bytes(b"truncated")
    reference, _ = train(None)
    resumed, _ = train(tmp_path / "resume")
    assert "cannot resume" in capsys.readouterr().err
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in reference.state_dict().items())


def test_the_harness_resumes_a_killed_training_and_clears_the_state_when_saved(tmp_path):
    registry = discover({"core", "baseline"})
    settings = harness.Settings(dataset="synthbirds", workdir=tmp_path,
                                model_overrides={"weights": None, "epochs": 2, "input_size": 32},
                                dataset_options={"num_classes": 2, "images_per_class": 20, "resolution": 32})
    run_identity = harness.identity(registry, "baseline", settings)
    state = settings.checkpoint_dir(run_identity, "resume")

    def killed(iterable, desc="", total=None):
        if desc.endswith("2/2"):
            raise Stop(desc)
        return iterable

    with pytest.raises(Stop):
        harness.train(registry, "baseline", settings, killed)
    assert (state / resume.LATEST).is_file() and json.loads((state / resume.LATEST).read_text())["number"] == 0
    seen = []
    harness.train(registry, "baseline", settings, lambda it, desc="", total=None: seen.append(desc) or it)
    epochs = [d for d in seen if d.endswith("/2")]
    assert len(epochs) == 1 and epochs[0].endswith("2/2"), seen  # epoch 1 was not trained again
    assert not state.exists() and (settings.checkpoint_dir(run_identity) / "model.safetensors").is_file()
