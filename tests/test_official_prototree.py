"""Loading the official ProtoTree's ``model_state.pth`` (github.com/M-Nauta/ProtoTree) into ours.

The official state dicts here are built from the layout of the official code, not by running it:
``prototree/prototree.py`` (``ProtoTree``: ``_root``, ``_net``, ``_add_on``, ``prototype_layer``),
``prototree/branch.py``/``leaf.py`` (``l``/``r`` children, ``_dist_params`` per leaf, pre-order ids),
``util/net.py`` and ``features/resnet_features.py`` (``ResNet_features``), ``util/l2conv.py``.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from protobench_prototree.model import ProtoTree
from protobench_prototree.official import convert
from protobench_prototree.plugin import SPEC

DEPTH, CLASSES, FEATURES = 3, 4, 6
BRANCHES, LEAVES = 2**DEPTH - 1, 2**DEPTH
PROTOTYPES = "prototype_layer.prototype_vectors"
#: official pre-order ids of the branches of a depth-3 tree, and of the leaves
#: (root 0; l 1, ll 2, lr 5; r 8, rl 9, rr 12)
BRANCH_IDS = [0, 1, 2, 5, 8, 9, 12]


def config(**overrides):
    tiny = {"num_classes": CLASSES, "depth": DEPTH, "num_features": FEATURES, "backbone": "resnet18",
            "weights": None, "input_size": 32}
    return SPEC.config("paper", **{**tiny, **overrides})


def leaf_key(path: str) -> str:
    return "_root." + "".join(step + "." for step in path) + "_dist_params"


def leaf_paths(depth: int) -> list[str]:
    """Left to right: ``l...l`` first."""
    paths = [""]
    for _ in range(depth):
        paths = [p + step for p in paths for step in "lr"]
    return paths


def official_resnet_shapes(layers=(2, 2, 2, 2), bottleneck=False) -> dict[str, tuple[int, ...]]:
    """``ResNet_features``'s state-dict shapes (``features/resnet_features.py``): resnet18 by default."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(name: str, channels: int) -> None:
        shapes.update({f"{name}.{p}": (channels,) for p in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{name}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes, expansion = 64, 4 if bottleneck else 1
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(blocks):
            block = f"layer{i}.{b}"
            convs = ([(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)] if bottleneck
                     else [(planes, inplanes, 3), (planes, planes, 3)])
            for j, (out, cin, k) in enumerate(convs, start=1):
                shapes[f"{block}.conv{j}.weight"] = (out, cin, k, k)
                bn(f"{block}.bn{j}", out)
            if b == 0 and (i > 1 or inplanes != planes * expansion):
                shapes[f"{block}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{block}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return shapes


def official_state(depth=DEPTH, classes=CLASSES, features=FEATURES, backbone=None, channels=512,
                   fill=torch.randn):
    """An official ``ProtoTree.state_dict()`` in its own order: leaves, ``_net``, ``_add_on``, prototypes."""
    state = {leaf_key(path): fill(classes) for path in leaf_paths(depth)}
    for name, shape in (backbone or official_resnet_shapes()).items():
        if name.endswith("num_batches_tracked"):
            state["_net." + name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state["_net." + name] = torch.rand(shape) + 0.5
        else:
            state["_net." + name] = fill(shape) * 0.05
    state["_add_on.0.weight"] = fill(features, channels, 1, 1)
    state[PROTOTYPES] = fill(2**depth - 1, features, 1, 1)
    return state


@pytest.fixture(scope="module")
def official():
    torch.manual_seed(0)
    return official_state()


#: a shuffled ``_out_map`` (official branch id -> prototype row), as the official set order makes it
OUT_MAP = dict(zip(BRANCH_IDS, [3, 6, 0, 5, 1, 4, 2]))


@pytest.fixture(scope="module")
def loaded(official):
    model = ProtoTree(config())
    model.load_state_dict(convert(official, config(), out_map=OUT_MAP), strict=True)
    return model.eval()


def test_prototypes_and_leaves_land_at_their_nodes(official, loaded):
    protos = official[PROTOTYPES]
    # ours are heap-ordered: 0 root, 1 l, 2 r, 3 ll, 4 lr, 5 rl, 6 rr
    assert torch.equal(loaded.prototype_vectors[0], protos[OUT_MAP[0]])  # root
    assert torch.equal(loaded.prototype_vectors[2], protos[OUT_MAP[8]])  # r
    assert torch.equal(loaded.prototype_vectors[4], protos[OUT_MAP[5]])  # lr
    assert torch.equal(loaded.prototype_vectors[5], protos[OUT_MAP[9]])  # rl
    assert torch.equal(loaded.leaf_params[0], official["_root.l.l.l._dist_params"])  # deepest left leaf
    assert torch.equal(loaded.leaf_params[2], official["_root.l.r.l._dist_params"])
    assert torch.equal(loaded.leaf_params[6], official["_root.r.r.l._dist_params"])
    assert torch.equal(loaded.leaf_params[7], official["_root.r.r.r._dist_params"])


def test_backbone_add_on_and_filled_buffers(official, loaded):
    state = loaded.state_dict()
    for name in ("conv1.weight", "layer3.0.downsample.0.weight", "layer4.1.bn2.running_var",
                 "layer2.0.bn1.num_batches_tracked"):
        assert torch.equal(state["features.model." + name], official["_net." + name])
    assert torch.equal(loaded.add_on_layers[0].weight, official["_add_on.0.weight"])
    assert loaded.prototype_classes.tolist() == [-1] * BRANCHES
    assert loaded.prototype_sources.tolist() == [[-1, -1, -1]] * BRANCHES


def test_prediction_matches_the_official_recursion(official, loaded):
    """Eq. 3 the official way: a recursion over ``l``/``r`` with pre-order ids and ``_out_map`` rows."""
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        z = loaded.latent(x)
        protos = official[PROTOTYPES][:, :, 0, 0]
        distances = ((z[:, None] - protos[None, :, :, None, None]) ** 2).sum(2).sqrt()
        similarity = torch.exp(-distances.flatten(2).min(2).values)  # [B, row]

        def node(path: str, ident: int) -> tuple[torch.Tensor, int]:  # (distribution [B, C], subtree size)
            if len(path) == DEPTH:
                return F.softmax(official[leaf_key(path)], 0).expand(len(x), -1), 1
            left, left_size = node(path + "l", ident + 1)
            right, right_size = node(path + "r", ident + 1 + left_size)
            p = similarity[:, OUT_MAP[ident], None]
            return (1 - p) * left + p * right, 1 + left_size + right_size

        expected, size = node("", 0)
        ours = loaded.soft_prediction(loaded.route(x))
    assert size == BRANCHES + LEAVES
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


def test_without_out_map_warns_and_assumes_pre_order(official):
    with pytest.warns(UserWarning, match="_out_map"):
        state = convert(official, config())
    protos = official[PROTOTYPES]
    # heap node -> the rank of its pre-order id among the branches
    for ours, row in zip([0, 1, 2, 3, 4, 5, 6], [0, 1, 4, 2, 3, 5, 6]):
        assert torch.equal(state["prototype_vectors"][ours], protos[row])


def test_loads_into_a_pruned_config(official):
    cfg = config(pruned_nodes=[3])  # ll and its parent l removed (l always goes right): 5 prototypes remain
    model = ProtoTree(cfg)
    model.load_state_dict(convert(official, cfg, out_map=OUT_MAP), strict=True)
    assert model.prototype_sources.shape == (BRANCHES - 2, 3)
    assert torch.equal(model.prototype_vectors[4], official[PROTOTYPES][OUT_MAP[5]])  # full tensors are kept


def _drop(state, key):
    return {k: v for k, v in state.items() if k != key}


def _pruned(state):
    """The official prune of ``_root.l.l``: ``_root.l.r`` takes ``_root.l``'s place."""
    pruned = {k: v for k, v in state.items() if not k.startswith("_root.l.")}
    return {**pruned, "_root.l.l._dist_params": state["_root.l.r.l._dist_params"],
            "_root.l.r._dist_params": state["_root.l.r.r._dist_params"]}


@pytest.mark.parametrize("fault, message", [
    (lambda s: {**s, PROTOTYPES: torch.randn(BRANCHES, FEATURES, 2, 2)},
     (r"'prototype_layer.prototype_vectors' has shape \(7, 6, 2, 2\).*"
      r"'prototype_vectors' of shape \(7, 6, 1, 1\)")),
    (lambda s: {**s, "_root.r.l.r._dist_params": torch.randn(CLASSES + 1)},
     r"'_root.r.l.r._dist_params' has shape \(5,\).*'leaf_params\[5\]' of shape \(4,\)"),
    (lambda s: _drop(s, "_root.l.r.r._dist_params"), r"missing \['_root.l.r.r._dist_params'\]"),
    (lambda s: _drop(s, "_net.layer2.0.downsample.1.bias"), r"missing \['_net.layer2.0.downsample.1.bias'\]"),
    (lambda s: {**s, "_net.layer4.1.conv2.weight": torch.randn(512, 512, 1, 1)},
     (r"'_net.layer4.1.conv2.weight' has shape \(512, 512, 1, 1\).*"
      r"'features.model.layer4.1.conv2.weight' of shape \(512, 512, 3, 3\)")),
    (lambda s: _drop(s, "_add_on.0.weight"), r"'_add_on.0.weight' is missing.*'add_on_layers.0.weight'"),
    (lambda s: _drop(s, PROTOTYPES), r"'prototype_layer.prototype_vectors' is missing"),
    (lambda s: {**s, "_net.fc.weight": torch.randn(1000, 512)}, r"unexpected \['_net.fc.weight'\]"),
    (lambda s: {**s, "module.extra": torch.randn(1)},
     r"official keys \['module.extra'\] \(1\) have no counterpart"),
    (_pruned, r"complete tree of depth 3.*pruned"),
])
def test_a_key_or_shape_that_does_not_fit_is_a_one_line_error(official, fault, message, one_line_error):
    assert re.search(message, one_line_error(convert, fault(official), config(), out_map=OUT_MAP))


def test_a_bad_out_map_is_a_one_line_error(official, one_line_error):
    assert "out_map must map" in one_line_error(convert, official, config(), out_map={**OUT_MAP, 0: OUT_MAP[1]})


def test_resnet50_names_fit_the_paper_backbone():
    """The paper's ``resnet50_inat`` (``ResNet_features``, Bottlenecks [3, 4, 6, 3]) is timm's resnet50."""
    backbone = official_resnet_shapes((3, 4, 6, 3), bottleneck=True)
    state = official_state(depth=2, backbone=backbone, channels=2048, fill=torch.zeros)
    cfg = config(depth=2, backbone="resnet50")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        converted = convert(state, cfg)
    assert converted["features.model.layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert len([k for k in converted if k.startswith("features.model.")]) == len(backbone)
