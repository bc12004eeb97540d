"""``protobench import``: an official state dict mapped onto a model and saved as its checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from protobench.api.contract import Explanation, ModelSpec, PrototypeModel
from protobench.api.plugins import Registry, registry
from protobench.api.state_files import StateFileError
from protobench.runner import checkpoint, harness

SMALL = {"num_classes": 3, "images_per_class": 4}


class Net(PrototypeModel):
    def __init__(self, config):
        super().__init__()
        self.config, self.num_classes, self.input_size = dict(config), config["num_classes"], (8, 8)
        self.register_buffer("prototype_classes", torch.arange(self.num_classes))
        self.prototypes = nn.Parameter(torch.zeros(self.num_classes, 3))

    def explain(self, x):
        sims = -((x.mean((2, 3))[:, :, None] - self.prototypes.T[None]) ** 2).sum(1)  # [B, P]
        return Explanation(logits=sims, similarities=sims[:, :, None, None])


def official_names(state, config):
    """The official code calls the prototypes ``prototype_vectors`` and stores them transposed."""
    return {"prototypes": state["prototype_vectors"].T.contiguous(), "prototype_classes": torch.arange(3)}


def _registry(convert=official_names) -> Registry:
    spec = ModelSpec(name="net", build=Net, train=None, paper="", default_config={"input_size": 8},
                     from_official=convert)
    return Registry(models={"net": spec}, datasets=dict(registry().datasets))


def test_an_official_state_dict_becomes_the_configurations_checkpoint(tmp_path):
    official = torch.arange(9.0).reshape(3, 3)
    path = tmp_path / "official.pth"
    torch.save({"model_state_dict": {"prototype_vectors": official}}, path)
    settings = harness.Settings(workdir=tmp_path / "work", dataset_options=SMALL)
    directory = harness.import_official(_registry(), "net", settings, path)
    model, meta = harness.load_trained(_registry(), "net", settings, torch.device("cpu"))
    assert torch.equal(model.prototypes, official.T)
    assert meta["info"]["imported_from"] == str(path) and len(meta["info"]["sha256"]) == 64
    with pytest.raises(ValueError, match="already holds a checkpoint of this configuration"):
        harness.import_official(_registry(), "net", settings, path)
    assert checkpoint.exists(directory)


def test_what_cannot_be_imported_is_refused_in_one_line(tmp_path):
    settings = harness.Settings(workdir=tmp_path, dataset_options=SMALL)
    path = tmp_path / "official.safetensors"
    save_file({"prototype_vectors": torch.zeros(3, 4)}, str(path))  # 4 dimensions where ours has 3
    with pytest.raises(checkpoint.CheckpointError, match="official.safetensors does not fit model 'net'.*size mismatch for prototypes"):
        harness.import_official(_registry(), "net", settings, path)
    with pytest.raises(ValueError, match="cannot import official checkpoints"):
        harness.import_official(_registry(convert=None), "net", settings, path)
    whole = tmp_path / "model.pth"
    torch.save(Net({"num_classes": 3}), whole)  # what the official ProtoPNet code saves: the pickled model
    with pytest.raises(StateFileError, match="model.pth holds pickled Python objects"):
        harness.import_official(_registry(), "net", settings, whole)
    assert not (tmp_path / "checkpoints").exists()
