"""ProtoPNet: distances, similarities, pooling, last layer, losses, push, recipe, training."""

from __future__ import annotations

import json
import math

import pytest
import torch
from protobench_protopnet.losses import cluster_cost, protopnet_objective, separation_cost, wrong_class_l1
from protobench_protopnet.model import ProtoPNet, add_on_layers, log_similarity, squared_l2_distances
from protobench_protopnet.plugin import PAPER, QUICK, SPEC
from protobench_protopnet.push import push_prototypes
from protobench_protopnet.recipe import protopnet_recipe
from tiny_data import ColourItems
from torch import nn

from protobench.api.contract import TrainData
from protobench.api.plugins import discover
from protobench.runner import checkpoint
from protobench.runner.training import StepSchedule, run_recipe


def quiet(iterable, desc="", total=None):
    return iterable


def tiny_config(**overrides):
    tiny = {"num_classes": 3, "input_size": 16, "backbone": "resnet10t", "output_stride": None, "weights": None,
            "prototypes_per_class": 2, "prototype_dim": 3}
    return SPEC.config("quick", **{**tiny, **overrides})


def identity_model(num_classes=2, per_class=2):
    """A ProtoPNet whose latent grid is the input itself (3 channels), for hand-computed checks."""
    torch.manual_seed(0)
    model = ProtoPNet(tiny_config(num_classes=num_classes, prototypes_per_class=per_class))
    model.normalize = model.features = model.add_on_layers = nn.Identity()
    return model


class Items(torch.utils.data.Dataset):
    """Item dicts from fixed images; ``index`` is offset to tell it apart from the position."""

    def __init__(self, images, labels, offset=100):
        self.images, self.labels, self.offset = images, labels, offset
        self.num_classes = int(max(labels)) + 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "index": self.offset + i}


# --- Sec. 2.1: distances, similarity, pooling, last layer ---------------------------------------

def test_squared_l2_distances_by_hand():
    z = torch.tensor([[[0.0, 1.0], [1.0, 2.0]], [[0.0, 0.0], [1.0, 2.0]]])[None]  # D=2, 2x2 grid
    p = torch.tensor([[1.0, 0.0], [2.0, 2.0]]).view(2, 2, 1, 1)
    expected = torch.tensor([[[1.0, 0.0], [1.0, 5.0]], [[8.0, 5.0], [2.0, 0.0]]])[None]
    assert torch.allclose(squared_l2_distances(z, p), expected)


def test_log_similarity_by_hand():
    d = torch.tensor([0.0, 1.0, 3.0])
    expected = torch.tensor([math.log(1 / 1e-4), math.log(2 / 1.0001), math.log(4 / 3.0001)])
    assert torch.allclose(log_similarity(d), expected)


def test_explain_min_pools_distances_and_weights_similarities():
    model = identity_model(num_classes=2, per_class=1)
    x = torch.tensor([[[0.0, 1.0], [0.0, 0.5]], [[0.0, 0.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.5]]])[None]
    with torch.no_grad():
        model.prototype_vectors.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]).view(2, 3, 1, 1))
    out = model.explain(x)
    # prototype 0 is exactly the top-right patch; prototype 1 exactly the bottom-right one
    assert out.extra["min_distances"].tolist() == [[0.0, 0.0]]
    assert out.similarities[0, 0].argmax().item() == 1 and out.similarities[0, 1].argmax().item() == 3
    assert torch.allclose(out.similarities[0, 0, 1, 0], log_similarity(torch.tensor(2.0)))  # patch (0, 1, 0)
    top = math.log(1 / 1e-4)
    assert torch.allclose(out.logits, torch.tensor([[top - 0.5 * top, -0.5 * top + top]]))
    assert torch.allclose(out.contributions[0], torch.tensor([[top, -0.5 * top], [-0.5 * top, top]]))
    assert torch.allclose(model(x), out.logits)


def test_prototype_classes_last_layer_and_sources():
    model = ProtoPNet(tiny_config())
    assert model.prototype_classes.tolist() == [0, 0, 1, 1, 2, 2]
    assert model.last_layer.bias is None
    assert model.last_layer.weight.tolist() == [[1, 1, -0.5, -0.5, -0.5, -0.5],
                                                 [-0.5, -0.5, 1, 1, -0.5, -0.5],
                                                 [-0.5, -0.5, -0.5, -0.5, 1, 1]]
    assert model.prototype_vectors.shape == (6, 3, 1, 1)
    assert (model.prototype_sources == -1).all() and model.prototype_sources.shape == (6, 3)


def test_add_on_layers_follow_the_official_shapes():
    regular = add_on_layers(512, 128, "regular")
    assert [type(m).__name__ for m in regular] == ["Conv2d", "ReLU", "Conv2d", "Sigmoid"]
    bottleneck = add_on_layers(512, 128, "bottleneck")
    convs = [(m.in_channels, m.out_channels) for m in bottleneck if isinstance(m, nn.Conv2d)]
    assert convs == [(512, 256), (256, 256), (256, 128), (128, 128)]
    assert isinstance(bottleneck[-1], nn.Sigmoid) and isinstance(bottleneck[3], nn.ReLU)
    with pytest.raises(ValueError, match="unknown add_on_layers"):
        add_on_layers(8, 4, "deep")


def test_real_backbone_shapes_and_latent_range():
    model = ProtoPNet(tiny_config())
    out = model.explain(torch.rand(2, 3, 16, 16))
    assert out.logits.shape == (2, 3) and out.similarities.shape == (2, 6, 1, 1)
    assert out.contributions.shape == (2, 6, 3)
    z = model.latent(torch.rand(2, 3, 16, 16))
    assert z.min() >= 0 and z.max() <= 1  # the add-on layers end in a Sigmoid


# --- Sec. 2.2: losses -------------------------------------------------------------------------

MIN_D = torch.tensor([[1.0, 4.0, 2.0, 9.0], [3.0, 0.5, 7.0, 2.0]])
CLASSES = torch.tensor([0, 0, 1, 1])
LABELS = torch.tensor([0, 1])


def test_cluster_cost_by_hand():
    # image 0 (class 0): nearest own prototype at 1; image 1 (class 1): at 2
    assert cluster_cost(MIN_D, LABELS, CLASSES, max_dist=10.0).item() == pytest.approx(1.5)


def test_separation_cost_by_hand():
    # image 0: nearest other-class prototype at 2; image 1: at 0.5
    assert separation_cost(MIN_D, LABELS, CLASSES, max_dist=10.0).item() == pytest.approx(1.25)


def test_cluster_cost_keeps_the_official_max_dist_behaviour():
    # distances beyond max_dist: the masked-out zeros win the max, the cost saturates at max_dist
    far = torch.tensor([[12.0, 15.0, 1.0, 1.0]])
    assert cluster_cost(far, torch.tensor([0]), CLASSES, max_dist=10.0).item() == pytest.approx(10.0)


def test_wrong_class_l1_by_hand():
    weight = torch.tensor([[1.0, 2.0, -0.5, 3.0], [-4.0, 0.25, 1.0, 7.0]])
    assert wrong_class_l1(weight, CLASSES).item() == pytest.approx(0.5 + 3.0 + 4.0 + 0.25)


def test_objective_terms_match_hand_formulas():
    model = identity_model(num_classes=2, per_class=1)
    with torch.no_grad():
        model.prototype_vectors.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]).view(2, 3, 1, 1))
    images = torch.zeros(2, 3, 1, 1)
    images[1] = 1.0
    logits, terms = protopnet_objective(model, {"image": images, "label": torch.tensor([0, 0])})
    top, low = math.log(1 / 1e-4), math.log(4 / 3.0001)
    # image 0 matches prototype 0 exactly, image 1 matches prototype 1 exactly (squared distance 3 to the other)
    assert torch.allclose(logits, torch.tensor([[top - 0.5 * low, low - 0.5 * top], [low - 0.5 * top, top - 0.5 * low]]))
    margin = 1.5 * (top - low)  # logit of the true class minus the other, for image 0; reversed for image 1
    expected_ce = 0.5 * (math.log1p(math.exp(-margin)) + math.log1p(math.exp(margin)))
    assert terms["cross_entropy"].item() == pytest.approx(expected_ce, rel=1e-5)
    assert terms["cluster"].item() == pytest.approx(1.5)  # 0 for image 0, 3 for image 1
    assert terms["separation"].item() == pytest.approx(1.5)  # 3 for image 0, 0 for image 1
    assert terms["l1"].item() == pytest.approx(1.0)  # two wrong-class weights of -0.5


# --- Sec. 2.2: push ----------------------------------------------------------------------------

def test_push_projects_onto_the_nearest_own_class_patch():
    model = identity_model(num_classes=2, per_class=1)
    grid = lambda *cells: torch.tensor(cells).T.reshape(3, 1, 2)
    images = torch.stack([
        grid([0.9, 0.9, 0.9], [0.0, 0.0, 0.0]),  # class 1: the globally nearest patch to prototype 0
        grid([0.0, 0.0, 0.0], [0.6, 0.6, 0.6]),  # class 0: nearest own-class patch, column 1
        grid([0.2, 0.2, 0.2], [0.1, 0.1, 0.1]),  # class 1: nearest own-class patch of prototype 1, column 0
    ])
    with torch.no_grad():
        model.prototype_vectors.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.25, 0.25, 0.25]]).view(2, 3, 1, 1))
    dataset = Items(images, [1, 0, 1])
    push_prototypes(model, TrainData(dataset, dataset, dataset, 2), quiet, batch_size=2)
    assert torch.equal(model.prototype_vectors[:, :, 0, 0], torch.stack([images[1, :, 0, 1], images[2, :, 0, 0]]))
    assert model.prototype_sources.tolist() == [[101, 0, 1], [102, 0, 0]]


def test_push_with_a_real_backbone_copies_exact_training_patches():
    torch.manual_seed(0)
    model = ProtoPNet(tiny_config(num_classes=2, output_stride=8))
    dataset = ColourItems(6, offset=100)
    push_prototypes(model, TrainData(dataset, dataset, dataset, 2), quiet, batch_size=4)
    with torch.no_grad():
        latent = model.latent(torch.stack([dataset[i]["image"] for i in range(len(dataset))]))
    assert (model.prototype_sources >= 0).all()
    for j, (index, row, col) in enumerate(model.prototype_sources.tolist()):
        position = index - dataset.offset
        assert dataset.labels[position] == model.prototype_classes[j].item()
        assert torch.allclose(model.prototype_vectors[j, :, 0, 0], latent[position, :, row, col], atol=1e-6)
        assert model.explain(dataset[position]["image"][None]).extra["min_distances"][0, j] < 1e-4


# --- Sec. 2.2: the recipe ----------------------------------------------------------------------

def summary(phases):
    return [(p.name, getattr(p, "epochs", None)) for p in phases]


def test_recipe_follows_the_official_push_schedule():
    config = {**PAPER, "warm_epochs": 2, "train_epochs": 12, "push_start": 5, "push_every": 5, "last_layer_epochs": 3}
    assert summary(protopnet_recipe(config)) == [
        ("warm", 2), ("joint", 4), ("push", None), ("last_layer", 3),
        ("joint", 5), ("push", None), ("last_layer", 3),
        ("joint", 1), ("push", None), ("last_layer", 3),  # the final push cycle (a named departure)
    ]
    paper = protopnet_recipe(PAPER)
    assert sum(p.name == "push" for p in paper) == 100  # epochs 10, 20, ..., 990 and the final one


def test_recipe_groups_learning_rates_and_schedule():
    phases = {p.name: p for p in protopnet_recipe(PAPER)}
    lrs = lambda name: {g.prefix: (g.lr, g.weight_decay) for g in phases[name].groups}
    assert lrs("warm") == {"add_on_layers": (3e-3, 1e-3), "prototype_vectors": (3e-3, 0.0)}
    assert lrs("joint") == {"features": (1e-4, 1e-3), "add_on_layers": (3e-3, 1e-3), "prototype_vectors": (3e-3, 0.0)}
    assert lrs("last_layer") == {"last_layer": (1e-4, 0.0)}
    assert phases["joint"].schedule == StepSchedule(5, 0.1, offset=1)
    assert dict(phases["warm"].coefficients) == {"cross_entropy": 1.0, "cluster": 0.8, "separation": -0.08, "l1": 1e-4}


def test_warm_phase_trains_only_add_on_and_prototypes():
    torch.manual_seed(0)
    model = ProtoPNet(tiny_config(num_classes=2))
    before = {k: v.clone() for k, v in model.named_parameters()}
    warm = protopnet_recipe(tiny_config(num_classes=2, warm_epochs=1))[0]
    assert warm.name == "warm"
    dataset = ColourItems(8, offset=100)
    run_recipe(model, [warm], TrainData(dataset, dataset, dataset, 2), quiet, batch_size=4)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("add_on_layers.", "prototype_vectors")) for k in changed)
    assert "prototype_vectors" in changed


def test_tiny_training_end_to_end_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_classes=2, warm_epochs=1, train_epochs=3, push_start=1,
                         push_every=2, last_layer_epochs=1, batch_size=8, output_stride=16)
    json.dumps(config)
    model = SPEC.build(config)
    dataset = ColourItems(16, offset=100)
    trained = SPEC.train(model, TrainData(dataset, dataset, dataset, 2), config, quiet)
    assert trained is model and not model.training
    assert (model.prototype_sources >= 0).all()
    registry = discover({"protopnet"})
    checkpoint.save(model, "protopnet", tmp_path)
    again = checkpoint.load(tmp_path, registry)
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(again.prototype_sources, model.prototype_sources)
    assert torch.allclose(again(x), model(x))


def test_profiles_carry_the_required_keys():
    for profile in ("quick", "paper"):
        config = SPEC.config(profile)
        assert {"backbone", "num_classes", "input_size"} <= set(config)
        json.dumps(config)
    assert QUICK["input_size"] == 64 and PAPER["prototypes_per_class"] == 10 and PAPER["prototype_dim"] == 128
