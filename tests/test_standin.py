"""The shared stand-in backbone: bounded receptive field, disjoint pretraining classes, content-hash cache."""

from __future__ import annotations

import pytest
import torch

from protobench.api.plugins import registry
from protobench.data.synthbirds import SynthBirdsConfig, class_table
from protobench.models.backbones import BackboneError, build_backbone
from protobench.runner import checkpoint, standin
from protobench.runner.standin import STANDIN, StandinRecipe, resolve_weights, standin_weights

TINY = StandinRecipe(num_classes=3, images_per_class=6, epochs=1, batch_size=8)


def quiet(iterable, **_):
    return iterable


@pytest.mark.parametrize(("name", "field"), [("localnet_rf19", 19), ("localnet_rf27", 27)])
def test_receptive_field_is_bounded(name: str, field: int) -> None:
    """The gradient of one output cell reaches exactly a ``field`` x ``field`` window of the input."""
    features, _ = build_backbone(name, output_stride=8)
    features.eval()
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    out = features(x)
    assert out.shape[-2:] == (8, 8)
    out[0, :, 4, 4].sum().backward()
    rows, cols = (x.grad[0].abs().sum(0) > 0).nonzero(as_tuple=True)
    assert int(rows.max() - rows.min() + 1) == field and int(cols.max() - cols.min() + 1) == field


def test_localnet_rejects_other_strides() -> None:
    with pytest.raises(BackboneError, match="output_stride=16"):
        build_backbone("localnet_rf19", output_stride=16)


def test_pretraining_classes_are_disjoint_from_the_benchmarks() -> None:
    recipe = StandinRecipe()
    pretraining = class_table(SynthBirdsConfig(num_classes=recipe.num_classes, first_class=recipe.first_class))
    benchmark = class_table(SynthBirdsConfig(num_classes=recipe.first_class))
    assert len(pretraining) == recipe.num_classes > 24
    assert not {c.name for c in pretraining} & {c.name for c in benchmark}


def test_cached_by_content_hash(tmp_path, monkeypatch) -> None:
    device = torch.device("cpu")
    path = standin_weights("localnet_rf19", 8, 32, tmp_path, device, quiet, TINY)
    assert path.is_file() and (path.parent / standin.META).is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached stand-in was pretrained again")

    monkeypatch.setattr(standin, "run_recipe", no_training)
    assert standin_weights("localnet_rf19", 8, 32, tmp_path, device, quiet, TINY) == path
    with pytest.raises(AssertionError, match="pretrained again"):  # another recipe is another stand-in
        standin_weights("localnet_rf19", 8, 32, tmp_path, device, quiet, StandinRecipe(**{**TINY.__dict__, "seed": 1}))


def test_resolve_weights_only_replaces_the_standin(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(standin, "standin_weights", lambda *args, **kwargs: tmp_path / "w.safetensors")
    config = {"backbone": "localnet_rf19", "output_stride": 8, "input_size": 64}
    assert resolve_weights({**config, "weights": STANDIN}, tmp_path, torch.device("cpu"), quiet)["weights"] == str(
        tmp_path / "w.safetensors")
    assert resolve_weights({**config, "weights": "mine.pt"}, tmp_path, torch.device("cpu"), quiet)["weights"] == "mine.pt"


def test_checkpoint_loads_without_the_standin_file(tmp_path) -> None:
    """A checkpoint holds every weight: it loads after the stand-in cache is deleted."""
    path = standin_weights("localnet_rf19", 8, 32, tmp_path, torch.device("cpu"), quiet, TINY)
    reg = registry()
    config = reg.model("baseline").config("quick", num_classes=3, input_size=32, backbone="localnet_rf19",
                                          output_stride=8, weights=str(path))
    model = reg.model("baseline").build(config)
    checkpoint.save(model, "baseline", tmp_path / "ckpt")
    path.unlink()
    loaded = checkpoint.load(tmp_path / "ckpt", reg)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))
