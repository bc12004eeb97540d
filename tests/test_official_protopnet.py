"""Loading the official ProtoPNet's state dict (github.com/cfchen-duke/ProtoPNet) into ours.

The official names and shapes are generated here from the layer layouts of its model.py (PPNet),
vgg_features.py, resnet_features.py and densenet_features.py, not by running its code.
"""

from __future__ import annotations

import pytest
import torch
from protobench_protopnet.model import ProtoPNet
from protobench_protopnet.official import convert
from protobench_protopnet.plugin import SPEC

Shapes = dict[str, tuple[int, ...]]

# vgg_features.cfg
VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
# resnet_features.resnet*_features: (bottleneck block?, blocks per layer)
RESNET_CFG = {"resnet18": (False, [2, 2, 2, 2]), "resnet34": (False, [3, 4, 6, 3]),
              "resnet50": (True, [3, 4, 6, 3]), "resnet101": (True, [3, 4, 23, 3]),
              "resnet152": (True, [3, 8, 36, 3])}
# densenet_features.densenet*_features: (num_init_features, growth_rate, block_config)
DENSENET_CFG = {"densenet121": (64, 32, (6, 12, 24, 16)), "densenet161": (96, 48, (6, 12, 36, 24)),
                "densenet169": (64, 32, (6, 12, 32, 32)), "densenet201": (64, 32, (6, 12, 48, 32))}
ALL_BACKBONES = [*VGG_CFG, *(f"{name}_bn" for name in VGG_CFG), *RESNET_CFG, *DENSENET_CFG]


def batch_norm(prefix: str, channels: int) -> Shapes:
    return {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def vgg_features(name: str) -> tuple[Shapes, int]:
    """VGG_features: ``features.features.<i>`` over conv [bn] relu / maxpool, as _make_layers numbers them."""
    shapes: Shapes = {}
    with_bn = name.endswith("_bn")
    i, channels = 0, 3
    for v in VGG_CFG[name.removesuffix("_bn")]:
        if v == "M":
            i += 1
            continue
        shapes[f"features.features.{i}.weight"] = (v, channels, 3, 3)
        shapes[f"features.features.{i}.bias"] = (v,)
        if with_bn:
            shapes |= batch_norm(f"features.features.{i + 1}", v)
        i += 3 if with_bn else 2
        channels = v
    return shapes, channels


def resnet_features(name: str) -> tuple[Shapes, int]:
    """ResNet_features: ``features.conv1``, ``features.bn1``, ``features.layer<k>.<j>.*``."""
    bottleneck, blocks = RESNET_CFG[name]
    expansion = 4 if bottleneck else 1
    shapes: Shapes = {"features.conv1.weight": (64, 3, 7, 7)} | batch_norm("features.bn1", 64)
    inplanes = 64
    for k, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for j in range(count):
            p = f"features.layer{k}.{j}"
            if bottleneck:
                convs = [(planes, inplanes, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
            else:
                convs = [(planes, inplanes, 3, 3), (planes, planes, 3, 3)]
            for n, shape in enumerate(convs, start=1):
                shapes[f"{p}.conv{n}.weight"] = shape
                shapes |= batch_norm(f"{p}.bn{n}", shape[0])
            if j == 0 and (k > 1 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                shapes |= batch_norm(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return shapes, inplanes


def densenet_features(name: str) -> tuple[Shapes, int]:
    """DenseNet_features: ``features.features.{conv0,norm0,denseblock<k>,transition<k>,norm5}``."""
    init, growth, block_config = DENSENET_CFG[name]
    p = "features.features"
    shapes: Shapes = {f"{p}.conv0.weight": (init, 3, 7, 7)} | batch_norm(f"{p}.norm0", init)
    channels = init
    for k, count in enumerate(block_config, start=1):
        for j in range(count):
            layer, inside = f"{p}.denseblock{k}.denselayer{j + 1}", channels + j * growth
            shapes |= batch_norm(f"{layer}.norm1", inside)
            shapes[f"{layer}.conv1.weight"] = (4 * growth, inside, 1, 1)
            shapes |= batch_norm(f"{layer}.norm2", 4 * growth)
            shapes[f"{layer}.conv2.weight"] = (growth, 4 * growth, 3, 3)
        channels += count * growth
        if k < len(block_config):
            shapes |= batch_norm(f"{p}.transition{k}.norm", channels)
            shapes[f"{p}.transition{k}.conv.weight"] = (channels // 2, channels, 1, 1)
            channels //= 2
    return shapes | batch_norm(f"{p}.norm5", channels), channels


def add_on_layers(channels: int, depth: int, kind: str) -> Shapes:
    """PPNet.add_on_layers: conv, ReLU, conv, Sigmoid ("regular") or halving conv pairs ("bottleneck")."""
    pairs = []
    if kind == "regular":
        pairs = [(channels, depth)]
    else:
        current = channels
        while current > depth or not pairs:
            pairs.append((current, max(depth, current // 2)))
            current //= 2
    shapes: Shapes = {}
    for n, (cin, cout) in enumerate(pairs):
        shapes |= {f"add_on_layers.{4 * n}.weight": (cout, cin, 1, 1), f"add_on_layers.{4 * n}.bias": (cout,),
                   f"add_on_layers.{4 * n + 2}.weight": (cout, cout, 1, 1), f"add_on_layers.{4 * n + 2}.bias": (cout,)}
    return shapes


def official_shapes(backbone: str, num_classes: int, per_class: int, depth: int, add_on: str) -> Shapes:
    """The names and shapes of ``PPNet.state_dict()`` for prototype_shape ``(C * per_class, depth, 1, 1)``."""
    family = vgg_features if backbone.startswith("vgg") else (
        resnet_features if backbone.startswith("resnet") else densenet_features)
    shapes, channels = family(backbone)
    prototypes = (num_classes * per_class, depth, 1, 1)
    return shapes | add_on_layers(channels, depth, add_on) | {
        "prototype_vectors": prototypes, "ones": prototypes, "last_layer.weight": (num_classes, prototypes[0])}


def official_state(backbone: str, num_classes: int = 3, per_class: int = 2, depth: int = 8,
                   add_on: str = "regular", device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random values in the official layout (``ones`` all ones, ``num_batches_tracked`` integers)."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in official_shapes(backbone, num_classes, per_class, depth, add_on).items():
        if key == "ones":
            state[key] = torch.ones(shape)
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.randint(0, 1000, shape, generator=gen, device=device) if device == "cpu" else (
                torch.empty(shape, dtype=torch.long, device=device))
        else:
            state[key] = torch.randn(shape, generator=gen) if device == "cpu" else torch.empty(shape, device=device)
    return state


def config(backbone: str, add_on: str = "regular", depth: int = 8):
    return SPEC.config("paper", backbone=backbone, num_classes=3, prototypes_per_class=2, prototype_dim=depth,
                       add_on_layers=add_on, input_size=32, weights=None)


def load(backbone: str, add_on: str = "regular", **extra) -> tuple[dict[str, torch.Tensor], ProtoPNet]:
    state = official_state(backbone, add_on=add_on)
    model = ProtoPNet(config(backbone, add_on))
    model.load_state_dict(convert({**state, **extra}, config(backbone, add_on)), strict=True)
    return state, model


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_every_official_backbone_maps_onto_timm(backbone):
    """Names and shapes only (meta tensors): every official backbone's layout fits timm's model of that name."""
    state = official_state(backbone, device="meta") | {"ones": torch.ones(6, 8, 1, 1)}
    result = convert(state, config(backbone))
    with torch.device("meta"):
        ours = ProtoPNet(config(backbone)).state_dict()
    assert {k: tuple(v.shape) for k, v in result.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_resnet18_tensors_land_in_place():
    state, model = load("resnet18")
    ours = model.state_dict()
    assert torch.equal(ours["prototype_vectors"], state["prototype_vectors"])
    assert torch.equal(ours["last_layer.weight"], state["last_layer.weight"])
    assert torch.equal(ours["add_on_layers.2.bias"], state["add_on_layers.2.bias"])
    for name in ("conv1.weight", "layer2.0.downsample.0.weight", "layer3.1.conv2.weight", "layer4.1.bn2.running_var",
                 "layer1.0.bn1.num_batches_tracked"):
        assert torch.equal(ours[f"features.model.{name}"], state[f"features.{name}"]), name
    assert not torch.equal(ours["features.model.layer3.1.conv1.weight"], state["features.layer3.1.conv2.weight"])
    assert ours["prototype_classes"].tolist() == [0, 0, 1, 1, 2, 2]
    assert (ours["prototype_sources"] == -1).all() and ours["prototype_sources"].shape == (6, 3)
    assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 3)


def test_vgg19_bottleneck_tensors_land_in_place():
    """The paper's backbone, with the official default ("bottleneck") add-on layers 512 -> 256 -> 128."""
    state, model = load("vgg19", add_on="bottleneck")
    ours = model.state_dict()
    for i in (0, 2, 16, 34):
        assert torch.equal(ours[f"features.model.features.{i}.weight"], state[f"features.features.{i}.weight"])
    for i in (0, 2, 4, 6, 8, 10):
        assert torch.equal(ours[f"add_on_layers.{i}.weight"], state[f"add_on_layers.{i}.weight"])
    assert torch.equal(ours["prototype_vectors"], state["prototype_vectors"])
    assert torch.equal(ours["last_layer.weight"], state["last_layer.weight"])


def test_densenet121_tensors_land_in_place():
    state, model = load("densenet121")
    ours = model.state_dict()
    for name in ("conv0.weight", "denseblock3.denselayer5.conv2.weight", "transition2.conv.weight",
                 "norm5.running_mean"):
        assert torch.equal(ours[f"features.model.features.{name}"], state[f"features.features.{name}"]), name


def test_class_identity_and_data_parallel_prefix():
    identity = torch.zeros(6, 3)
    identity[torch.arange(6), torch.tensor([2, 0, 1, 1, 0, 2])] = 1
    state = {f"module.{k}": v for k, v in official_state("resnet18").items()}
    result = convert({**state, "prototype_class_identity": identity}, config("resnet18"))
    assert result["prototype_classes"].tolist() == [2, 0, 1, 1, 0, 2]
    assert torch.equal(result["features.model.conv1.weight"], state["module.features.conv1.weight"])


def test_wrong_shape_names_official_key_and_expected_shape(one_line_error):
    state = official_state("resnet18")
    state["prototype_vectors"] = torch.rand(6, 16, 1, 1)
    message = one_line_error(convert, state, config("resnet18"))
    assert "'prototype_vectors' (6, 16, 1, 1)" in message and "(6, 8, 1, 1)" in message


def test_missing_key_names_official_key(one_line_error):
    state = official_state("resnet18")
    del state["features.layer4.1.bn2.weight"]
    message = one_line_error(convert, state, config("resnet18"))
    assert "lacks" in message and "'features.layer4.1.bn2.weight'" in message
    assert "'features.model.layer4.1.bn2.weight'" in message


def test_unknown_keys_wrong_backbone_wrong_add_on_and_bad_ones(one_line_error):
    message = one_line_error(convert, official_state("resnet18"), config("vgg11"))
    assert "no counterpart" in message and "'features.conv1.weight'" in message
    assert "'features.features.0.weight'" in message
    message = one_line_error(convert, official_state("resnet18", add_on="bottleneck", depth=128),
                             config("resnet18", depth=128))
    assert "'add_on_layers." in message
    state = official_state("resnet18")
    state["ones"][0] = 2.0
    assert "'ones'" in one_line_error(convert, state, config("resnet18"))
    state["unexpected"] = torch.zeros(1)
    assert "'unexpected'" in one_line_error(convert, state, config("resnet18"))


def test_protobench_import_then_eval_an_official_checkpoint(tmp_path, capsys):
    from protobench import cli

    path = tmp_path / "official_state.pth"
    state = official_state("resnet18")
    for key in state:  # a trained model's statistics: positive variances, small weights
        if key.endswith("running_var"):
            state[key] = state[key].abs() + 1
        elif state[key].is_floating_point() and key.endswith("weight") and state[key].ndim == 4:
            state[key] = state[key] * 0.05
    torch.save(state, path)
    common = ["--model", "protopnet", "--profile", "paper", "--workdir", str(tmp_path / "work"), "--device", "cpu",
              "--set", "backbone=resnet18", "--set", "prototypes_per_class=2", "--set", "prototype_dim=8",
              "--set", "input_size=32", "--set", "weights=null",
              "--data", "num_classes=3", "--data", "images_per_class=4", "--data", "resolution=32"]
    assert cli.main(["import", *common, "--checkpoint", str(path)]) == 0, capsys.readouterr().err
    assert "checkpoint: " in capsys.readouterr().out
    assert cli.main(["eval", *common, "--metrics", "accuracy"]) == 0, capsys.readouterr().err
    assert "protopnet accuracy: " in capsys.readouterr().out
    assert cli.main(["import", *common, "--checkpoint", str(path)]) == 2  # never over a checkpoint
    assert "already holds a checkpoint" in capsys.readouterr().err
