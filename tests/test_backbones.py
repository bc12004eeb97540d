"""Backbones: timm models built without download, local weights files, ImageNet normalisation."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from protobench.api.state_files import StateFileError, read_state_dict
from protobench.models.backbones import (
    BackboneClassifier,
    BackboneError,
    ImageNetNormalize,
    build_backbone,
    feature_scale,
)


def full_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A timm model's whole state dict (head included), as a user's checkpoint would hold it."""
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}


def test_feature_map_shape_and_channels():
    model, channels = build_backbone("resnet10t")
    out = model(torch.rand(2, 3, 64, 64))
    assert channels == 512 and out.shape == (2, 512, 2, 2)
    assert not any(k.startswith("model.fc") for k in model.state_dict())


def test_output_stride_enlarges_the_grid():
    model, _ = build_backbone("resnet10t", output_stride=16)
    assert model(torch.rand(1, 3, 64, 64)).shape[-2:] == (4, 4)


def test_unknown_backbone_is_named():
    with pytest.raises(BackboneError, match="no_such_net"):
        build_backbone("no_such_net")


def test_backbone_without_output_stride_is_named():
    with pytest.raises(BackboneError, match="mobilenetv3_small_050.*output_stride"):
        build_backbone("mobilenetv3_small_050", output_stride=16)
    with pytest.raises(BackboneError, match="'vgg11' does not accept output_stride=16: timm builds it at its native"):
        build_backbone("vgg11", output_stride=16)


def test_safetensors_weights_are_loaded(tmp_path):
    state = full_state("resnet10t", seed=1)
    path = tmp_path / "r10.safetensors"
    save_file(state, str(path))
    torch.manual_seed(2)
    fresh, _ = build_backbone("resnet10t")
    loaded, _ = build_backbone("resnet10t", str(path))
    key = "model.conv1.0.weight"
    assert not torch.equal(fresh.state_dict()[key], state["conv1.0.weight"])
    assert torch.equal(loaded.state_dict()[key], state["conv1.0.weight"])
    assert all(torch.equal(v, state[k.removeprefix("model.")]) for k, v in loaded.state_dict().items())


def test_pth_weights_load_with_weights_only(tmp_path):
    state = full_state("resnet10t", seed=3)
    path = tmp_path / "r10.pth"
    torch.save({"state_dict": state}, path)
    loaded, _ = build_backbone("resnet10t", str(path))
    assert torch.equal(loaded.state_dict()["model.layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": full_state("resnet10t", 0), "extra": object()}, path)
    with pytest.raises(StateFileError, match="evil.pth holds pickled Python objects") as refused:
        build_backbone("resnet10t", str(path))
    assert "\n" not in str(refused.value) and "weights_only=True" in str(refused.value)


def test_truncated_or_foreign_weights_files_are_one_line(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(full_state("resnet10t", 0), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_text("not a safetensors file")
    cut = tmp_path / "cut.pth"
    torch.save(full_state("resnet10t", 0), cut)
    cut.write_bytes(cut.read_bytes()[:-100])
    for bad, message in [(path, "cut.safetensors is not a readable safetensors file"),
                         (foreign, "foreign.safetensors is not a readable safetensors file"),
                         (cut, "cut.pth is not a readable PyTorch file")]:
        with pytest.raises(StateFileError, match=message) as refused:
            build_backbone("resnet10t", str(bad))
        assert "\n" not in str(refused.value)


def test_mismatched_weights_name_file_and_backbone(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    save_file(full_state("resnet18", 0), str(path))
    with pytest.raises(BackboneError, match=r"resnet18\.safetensors.*'resnet10t'"):
        build_backbone("resnet10t", str(path))


def test_missing_keys_are_reported(tmp_path):
    state = full_state("resnet10t", 0)
    del state["layer1.0.bn1.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(BackboneError, match="missing keys.*layer1.0.bn1.weight"):
        build_backbone("resnet10t", str(path))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(StateFileError, match="nowhere.safetensors does not exist"):
        build_backbone("resnet10t", str(tmp_path / "nowhere.safetensors"))


def test_imagenet_normalize_values_and_no_saved_state():
    norm = ImageNetNormalize()
    x = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) + torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), torch.ones(1, 3, 1, 1))
    assert norm.state_dict() == {}


def test_backbone_classifier_pools_and_shares_the_backbone():
    backbone, channels = build_backbone("resnet10t")
    classifier = BackboneClassifier(ImageNetNormalize(), backbone, channels, 5)
    x = torch.rand(2, 3, 32, 32)
    expected = classifier.head.linear(backbone(ImageNetNormalize()(x)).mean(dim=(2, 3)))
    assert torch.allclose(classifier(x), expected)
    assert classifier.backbone is backbone


def test_pooled_head_divides_out_the_backbones_output_scale():
    backbone, channels = build_backbone("localnet_rf19")
    assert feature_scale(backbone) == 0.005 and feature_scale(build_backbone("resnet10t")[0]) == 1.0
    classifier = BackboneClassifier(ImageNetNormalize(), backbone, channels, 3).eval()
    x = torch.rand(2, 3, 32, 32)
    raw = backbone.model.blocks(backbone.model.stem(ImageNetNormalize()(x)))
    torch.testing.assert_close(classifier(x), classifier.head.linear(raw.mean(dim=(2, 3))))


class _RunsCode:
    """Unpickling this would run a shell command (what a crafted checkpoint can do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_crafted_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "crafted.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(StateFileError, match="crafted.pth holds pickled Python objects") as refused:
        read_state_dict(path)
    assert not marker.exists() and "\n" not in str(refused.value)
    assert "weights_only=False" not in str(refused.value).split("where you trust the file")[0]
