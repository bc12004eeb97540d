"""The official ST-ProtoPNet state dict (github cwangrun/ST-ProtoPNet, commit 935aaa1) loaded into ours.

The official names and shapes are generated here from the layout its code builds, not from its code:
``full/model.py`` / ``cropped/model.py`` (``STProtoPNet``: ``add_on_layers_{b}``, ``prototype_vectors_{b}``,
``last_layer_{b}``, ``ones``) and ``full/models/{vgg,resnet,densenet}_features.py`` (the backbone under
``features.``). Values are random; the converted model must load strictly, put every tensor in its place and
compute what the official forward computes from the official tensors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from protobench_stprotopnet.model import STProtoPNet
from protobench_stprotopnet.official import convert
from protobench_stprotopnet.plugin import SPEC

C, K, D = 3, 2, 8  # classes, prototypes per class and branch, prototype depth
P = C * K  # prototypes per branch (the official prototype_shape[0])
ADD_ON_CONVS = {"full": (1, 2), "cropped": (0, 2)}  # official positions of the two 1x1 convs


def batch_norm(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    stats = {f"{prefix}.{p}": (n,) for p in ("weight", "bias", "running_mean", "running_var")}
    return {**stats, f"{prefix}.num_batches_tracked": ()}


def vgg11_layout() -> tuple[dict[str, tuple[int, ...]], int]:
    """``VGG_features(cfg['A'])``: ``features.features.<i>``, conv + ReLU per number, a max-pool per 'M'."""
    shapes, index, channels = {}, 0, 3
    for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
        if v == "M":
            index += 1
            continue
        shapes[f"features.features.{index}.weight"] = (v, channels, 3, 3)
        shapes[f"features.features.{index}.bias"] = (v,)
        index, channels = index + 2, v
    return shapes, channels


def resnet18_layout() -> tuple[dict[str, tuple[int, ...]], int]:
    """``ResNet_features(BasicBlock, [2, 2, 2, 2])``: ``conv1``, ``bn1``, ``layer1``-``layer4``, no ``fc``."""
    shapes = {"features.conv1.weight": (64, 3, 7, 7), **batch_norm("features.bn1", 64)}
    inplanes = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"features.layer{layer}.{block}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
            shapes |= batch_norm(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes |= batch_norm(f"{p}.bn2", planes)
            if block == 0 and inplanes != planes:
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                shapes |= batch_norm(f"{p}.downsample.1", planes)
            inplanes = planes
    return shapes, inplanes


def densenet121_layout() -> tuple[dict[str, tuple[int, ...]], int]:
    """``DenseNet_features()`` (growth 32, bn_size 4, blocks 6/12/24/16): ``features.features.*``, ``norm5``."""
    p = "features.features"
    shapes = {f"{p}.conv0.weight": (64, 3, 7, 7), **batch_norm(f"{p}.norm0", 64)}
    channels = 64
    for i, layers in enumerate((6, 12, 24, 16), start=1):
        for j in range(layers):
            q, n = f"{p}.denseblock{i}.denselayer{j + 1}", channels + j * 32
            shapes |= batch_norm(f"{q}.norm1", n) | {f"{q}.conv1.weight": (128, n, 1, 1)}
            shapes |= batch_norm(f"{q}.norm2", 128) | {f"{q}.conv2.weight": (32, 128, 3, 3)}
        channels += layers * 32
        if i < 4:
            shapes |= batch_norm(f"{p}.transition{i}.norm", channels)
            shapes[f"{p}.transition{i}.conv.weight"] = (channels // 2, channels, 1, 1)
            channels //= 2
    return shapes | batch_norm(f"{p}.norm5", channels), channels


LAYOUTS = {"vgg11": vgg11_layout, "resnet18": resnet18_layout, "densenet121": densenet121_layout}


def official_state(backbone: str, variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """An official ST-ProtoPNet state dict with random values (BN variances positive, counters integers)."""
    shapes, channels = LAYOUTS[backbone]()
    first, second = ADD_ON_CONVS[variant]
    for b in ("trivial", "support"):
        shapes |= {f"add_on_layers_{b}.{first}.weight": (D, channels, 1, 1), f"add_on_layers_{b}.{first}.bias": (D,),
                   f"add_on_layers_{b}.{second}.weight": (D, D, 1, 1), f"add_on_layers_{b}.{second}.bias": (D,),
                   f"prototype_vectors_{b}": (P, D, 1, 1), f"last_layer_{b}.weight": (C, P)}
    shapes["ones"] = (P, D, 1, 1)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * (0.05 if key.endswith(".weight") else 0.5)
    return state


def config(backbone: str, variant: str) -> dict:
    return SPEC.config("paper", backbone=backbone, variant=variant, weights=None, num_classes=C,
                       prototypes_per_class=K, prototype_dim=D, input_size=32)


def official_logits(state: dict, features: torch.Tensor, variant: str, upsample: bool) -> torch.Tensor:
    """The official forward's summed logits from its own tensors, given the backbone's feature map."""
    first, second = ADD_ON_CONVS[variant]
    total = 0
    for b in ("trivial", "support"):
        w = {i: (state[f"add_on_layers_{b}.{i}.weight"], state[f"add_on_layers_{b}.{i}.bias"]) for i in (first, second)}
        prototypes = state[f"prototype_vectors_{b}"]
        if variant == "full":
            z = F.interpolate(features, scale_factor=2, mode="bilinear") if upsample else features
            z = F.conv2d(F.conv2d(z, *w[first]), *w[second])
            maps = F.relu(F.conv2d(F.normalize(z, dim=1), F.normalize(prototypes, dim=1)))
        else:
            z = torch.tanh(F.conv2d(torch.tanh(F.conv2d(features, *w[first])), *w[second]))
            maps = F.conv2d(z, F.normalize(prototypes, dim=1))
        total = total + maps.amax(dim=(2, 3)) @ state[f"last_layer_{b}.weight"].T
    return total


def torchvision_trunk(backbone: str, state: dict) -> torch.nn.Module:
    """The official backbone as torchvision builds it (``full/``: VGG without its last max-pool), official weights."""
    weights = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if backbone.startswith("vgg"):  # the convolutional stack only (the classifier alone is 120M parameters)
        stack = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
        stack.load_state_dict({k.removeprefix("features."): v for k, v in weights.items()}, strict=True)
        return stack[:-1]
    net = getattr(torchvision.models, backbone)()
    net.load_state_dict(weights, strict=False)
    if backbone.startswith("densenet"):
        return torch.nn.Sequential(net.features, torch.nn.ReLU())  # official ``final_relu``
    return torch.nn.Sequential(*list(net.children())[:-2])  # ResNet_features: no avgpool, no fc


CASES = [("vgg11", "full", (0, 1)), ("resnet18", "full", (1, 2)), ("densenet121", "cropped", (0, 2))]


@pytest.mark.parametrize("backbone,variant,ours", CASES)
def test_official_state_dict_loads_strictly_and_every_tensor_lands_in_its_place(backbone, variant, ours):
    state, cfg = official_state(backbone, variant), config(backbone, variant)
    model = STProtoPNet(cfg).eval()
    model.load_state_dict(convert(state, cfg), strict=True)

    # support and trivial prototypes, both last layers, both add-on branches
    for b in ("trivial", "support"):
        assert torch.equal(model.prototype_vectors[b], state[f"prototype_vectors_{b}"])
        assert torch.equal(model.last_layer[b].weight, state[f"last_layer_{b}.weight"])
        for mine, official in zip(ours, ADD_ON_CONVS[variant]):
            assert torch.equal(model.add_on_layers[b][mine].weight, state[f"add_on_layers_{b}.{official}.weight"])
            assert torch.equal(model.add_on_layers[b][mine].bias, state[f"add_on_layers_{b}.{official}.bias"])
    # our prototype range: trivial [0, P), then support [P, 2P); classes j // K in each; sources unknown
    assert model.prototype_set == ("trivial",) * P + ("support",) * P
    assert model.prototype_classes.tolist() == [j // K for j in range(P)] * 2
    assert model.prototype_sources.shape == (2 * P, 3) and bool((model.prototype_sources == -1).all())
    # a backbone conv weight and a BN running mean: the official ``features.<rest>`` is timm's ``model.<rest>``
    ours_backbone = model.features.state_dict()
    last_conv = [k for k in state if k.startswith("features.") and state[k].ndim == 4][-1]
    assert torch.equal(ours_backbone["model." + last_conv.removeprefix("features.")], state[last_conv])
    first_conv = next(k for k in state if k.startswith("features.") and state[k].ndim == 4)
    assert torch.equal(ours_backbone["model." + first_conv.removeprefix("features.")], state[first_conv])

    # and it computes what the official code computes from the official tensors
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = model.features(model.normalize(x))
        torch.testing.assert_close(features, torchvision_trunk(backbone, state).eval()(model.normalize(x)))
        expected = official_logits(state, features, variant, upsample=not backbone.startswith("vgg"))
        torch.testing.assert_close(model(x), expected)


def test_a_wrapped_state_dicts_module_prefix_is_stripped_and_ones_dropped():
    state, cfg = official_state("resnet18", "full"), config("resnet18", "full")
    result = convert({"module." + k: v for k, v in state.items()}, cfg)
    assert "ones" not in result and not any(k.startswith("module.") for k in result)
    assert torch.equal(result["prototype_vectors.support"], state["prototype_vectors_support"])


def test_a_wrong_shape_is_one_line_naming_the_official_key_and_what_ours_expects(one_line_error):
    state, cfg = official_state("resnet18", "full"), config("resnet18", "full")
    state["prototype_vectors_support"] = torch.rand(P, D + 1, 1, 1)
    message = one_line_error(convert, state, cfg)
    assert "'prototype_vectors_support'" in message and f"({P}, {D + 1}, 1, 1)" in message
    assert "'prototype_vectors.support' expects (6, 8, 1, 1)" in message

    state = official_state("resnet18", "full")
    state["last_layer_trivial.weight"] = torch.rand(C + 1, P)
    assert "'last_layer_trivial.weight'" in one_line_error(convert, state, cfg)


def test_a_missing_key_is_one_line_naming_it(one_line_error):
    state, cfg = official_state("vgg11", "full"), config("vgg11", "full")
    del state["last_layer_support.weight"]
    message = one_line_error(convert, state, cfg)
    assert "'last_layer_support.weight' is missing" in message and "'last_layer.support.weight'" in message


def test_the_other_variants_layout_a_foreign_key_and_a_backbone_without_official_code_are_refused(one_line_error):
    cropped = official_state("resnet18", "cropped")
    message = one_line_error(convert, cropped, config("resnet18", "full"))
    assert "'add_on_layers_support.0.bias'" in message and "cropped/" in message
    state = official_state("resnet18", "full")
    state["features.fc.weight"] = torch.rand(C, 512)
    assert "'features.fc.weight'" in one_line_error(convert, state, config("resnet18", "full"))
    assert "no official" in one_line_error(convert, state, config("localnet_rf19", "full"))
