"""ST-ProtoPNet (Wang et al., ICCV 2023): losses by hand, the branch alternation, unit norm, push, contract."""

from __future__ import annotations

import math

import pytest
import torch
from protobench_stprotopnet.losses import (
    active_branch,
    branch_terms,
    closeness,
    cluster_similarity,
    discrimination,
    orthogonality,
    separation_similarity,
    st_protopnet_objective,
)
from protobench_stprotopnet.model import STProtoPNet
from protobench_stprotopnet.plugin import SPEC
from protobench_stprotopnet.push import push_branches
from protobench_stprotopnet.recipe import renormalise

from protobench.api.contract import TrainData
from protobench.runner.training import ParamGroup, Phase, run_recipe

# two classes, two prototypes each (rows: class 0, class 0, class 1, class 1), depth 2
PROTOTYPES = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.5]])[:, :, None, None]
CLASSES = torch.tensor([0, 0, 1, 1])


def tiny(num_classes: int = 2, **overrides) -> STProtoPNet:
    torch.manual_seed(0)
    config = {**SPEC.config("quick"), "weights": None, "num_classes": num_classes, "input_size": 32, **overrides}
    return STProtoPNet(config)


def quiet(iterable, desc="", total=None):
    return iterable


# -- loss terms by hand --------------------------------------------------------------------------------------

def test_cluster_and_separation_are_the_masked_maxima_averaged_over_images():
    activations = torch.tensor([[0.9, 0.2, 0.5, 0.1], [0.3, 0.7, 0.4, 0.6]])
    labels = torch.tensor([0, 1])
    # image 0 (class 0): own max(0.9, 0.2), other max(0.5, 0.1); image 1 (class 1): own max(0.4, 0.6), other 0.7
    assert float(cluster_similarity(activations, labels, CLASSES)) == pytest.approx((0.9 + 0.6) / 2)
    assert float(separation_similarity(activations, labels, CLASSES)) == pytest.approx((0.5 + 0.7) / 2)


def test_orthogonality_is_the_entrywise_l1_of_each_class_gram_minus_identity_summed():
    # class 0: Gram [[4, 0], [0, 1]] -> |4 - 1| = 3; class 1: Gram [[1, 1], [1, 1.25]] -> 1 + 1 + 0.25
    assert float(orthogonality(PROTOTYPES, 2)) == pytest.approx(3 + 2.25)


def test_discrimination_and_closeness_take_the_extreme_cross_class_dot_products():
    # cross-class dots: (2,0).(0.6,0.8) = 1.2, (2,0).(1,0.5) = 2, (0,1).(0.6,0.8) = 0.8, (0,1).(1,0.5) = 0.5
    assert float(discrimination(PROTOTYPES, 2)) == pytest.approx(2.0)
    assert float(closeness(PROTOTYPES, 2)) == pytest.approx(-0.5)


def test_pair_terms_average_over_ordered_pairs_of_different_classes():
    # three classes of one prototype each: dots 0.5 (0, 1), 0 (0, 2), 0.25 (1, 2); the mean over the six ordered
    # pairs is (0.5 + 0 + 0.25) * 2 / 6
    prototypes = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 0.5]])[:, :, None, None]
    assert float(discrimination(prototypes, 3)) == pytest.approx(0.75 / 3)
    assert float(closeness(prototypes, 3)) == pytest.approx(-0.75 / 3)


def test_branch_terms_l1_covers_the_wrong_class_weights_and_ce_the_branch_logits():
    model = tiny()  # 2 classes x 5 prototypes per branch; heads at +1 own class, -0.5 others
    labels = torch.tensor([0, 1])
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    terms = branch_terms(model, "support", labels, logits, torch.zeros(2, 10))
    assert float(terms["l1_support"]) == pytest.approx(10 * 0.5)  # each of 10 prototypes has one wrong class
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(0.5)) / 2
    assert float(terms["cross_entropy_support"]) == pytest.approx(expected)
    assert set(terms) == {"cross_entropy_support", "cluster_support", "separation_support", "orthogonality_support",
                          "l1_support", "closeness"}


# -- the objective and its alternation -----------------------------------------------------------------------

def test_even_batches_train_the_trivial_branch_odd_batches_the_support_branch():
    assert [active_branch(i) for i in range(4)] == ["trivial", "support", "trivial", "support"]
    model = tiny()
    images, labels = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    for index, active, idle in [(0, "trivial", "support"), (1, "support", "trivial")]:
        model.zero_grad(set_to_none=True)
        logits, terms = st_protopnet_objective(model, {"image": images, "label": labels, "batch_index": index})
        loss = sum(SPEC.default_config["coefficients"][k] * t for k, t in terms.items())
        loss.backward()
        terms = {k: t.detach() for k, t in terms.items()}
        assert all(float(t) == 0 for k, t in terms.items() if k.endswith(idle))
        assert float(terms[f"cross_entropy_{active}"]) > 0
        assert float(terms["discrimination" if active == "trivial" else "closeness"]) != 0
        assert float(terms["closeness" if active == "trivial" else "discrimination"]) == 0
        # the idle branch gets zero gradients, not none (the official torch 1.10 behaviour)
        idle_grad = model.prototype_vectors[idle].grad
        assert idle_grad is not None and float(idle_grad.abs().sum()) == 0
        assert float(model.prototype_vectors[active].grad.abs().sum()) > 0
        assert float(model.add_on_layers[active][-1].weight.grad.abs().sum()) > 0
        assert float(model.add_on_layers[idle][-1].weight.grad.abs().sum()) == 0
        torch.testing.assert_close(logits, model(images))


def test_after_every_step_both_prototype_sets_have_unit_norm():
    model = tiny()
    assert not torch.allclose(model.prototype_vectors["support"].norm(dim=1), torch.ones(1))  # torch.rand init
    data = TrainData(train=Images(5), push=Images(5), test=Images(5), num_classes=2)
    phase = Phase(name="warm", epochs=1, groups=(ParamGroup("prototype_vectors", 0.1),),
                  objective=st_protopnet_objective, coefficients=SPEC.default_config["coefficients"],
                  after_step=renormalise)
    run_recipe(model, [phase], data, quiet, batch_size=2)
    for vectors in model.prototype_vectors.values():
        torch.testing.assert_close(vectors.norm(dim=1), torch.ones_like(vectors.norm(dim=1)))


class Images(torch.utils.data.Dataset):
    """Random 32 px images of two classes."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(n)
        self.x, self.y = torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 2

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": int(self.y[i]), "index": i}


# -- push, explanation, variants -----------------------------------------------------------------------------

def test_push_puts_each_prototype_on_its_most_similar_own_class_cell_normalised():
    model = tiny().eval()
    data = TrainData(train=Images(6), push=Images(6), test=Images(6), num_classes=2)
    push_branches(model, data, quiet, batch_size=4)
    with torch.no_grad():
        z = model.latent(data.push.x)
    for i, branch in enumerate(("trivial", "support")):
        vectors = model.prototype_vectors[branch].detach()[:, :, 0, 0]
        torch.testing.assert_close(vectors.norm(dim=1), torch.ones(len(vectors)))
        for j, cls in enumerate(model.branch_classes.tolist()):
            image, row, col = model.prototype_sources[i * len(vectors) + j].tolist()
            assert int(data.push.y[image]) == cls
            cell = torch.nn.functional.normalize(z[branch][image, :, row, col], dim=0)
            torch.testing.assert_close(vectors[j], cell)
            # no own-class cell is more similar to it than its source (its cosine with itself is 1)
            own = z[branch][data.push.y == cls]
            best = torch.nn.functional.cosine_similarity(own, vectors[j][None, :, None, None], dim=1).max()
            assert float(best) == pytest.approx(1.0, abs=1e-5)


def test_explanation_covers_both_sets_and_contributions_sum_to_the_logits():
    model = tiny(num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        e = model.explain(x)
    per_class = SPEC.config("quick")["prototypes_per_class"]
    per_branch = 3 * per_class
    assert e.similarities.shape == (2, 2 * per_branch, 8, 8)  # 4x4 grid at 32 px, upsampled 2x
    assert e.extra["prototype_set"] == ("trivial",) * per_branch + ("support",) * per_branch
    assert model.prototype_classes.tolist() == [j // per_class for j in range(per_branch)] * 2
    torch.testing.assert_close(e.contributions.sum(dim=1), e.logits)
    assert float(e.similarities.min()) >= 0  # full: cosine through a ReLU


def test_the_cropped_variant_scores_logits_by_projection_and_keeps_the_grid():
    model = tiny(variant="cropped").eval()
    with torch.no_grad():
        z = model.latent(torch.rand(1, 3, 32, 32))["trivial"]
        result = model.branch_pass("trivial", z)
    assert z.shape[-1] == 4 and float(z.abs().max()) <= 1  # no upsampling; tanh
    prototypes = model.prototype_vectors["trivial"]
    expected = torch.einsum("bdhw,pd->bphw", z, prototypes[:, :, 0, 0] / prototypes[:, :, 0, 0].norm(dim=1, keepdim=True))
    torch.testing.assert_close(result.logit_maps, expected)
    assert float(result.loss_activations.max()) <= 1 + 1e-6  # cosine


def test_an_unknown_variant_is_refused_by_name():
    with pytest.raises(ValueError, match="'bottleneck'"):
        tiny(variant="bottleneck")


# -- the paper's claim, measured -----------------------------------------------------------------------------

def cross_class_similarity(model: STProtoPNet, branch: str) -> float:
    """Mean cosine between the branch's prototypes of different classes: high where they meet at the boundary."""
    vectors = torch.nn.functional.normalize(model.prototype_vectors[branch].detach()[:, :, 0, 0], dim=1)
    classes = model.branch_classes
    return float((vectors @ vectors.T)[classes[:, None] != classes[None, :]].mean())


def test_support_prototypes_lie_closer_to_the_decision_boundary_than_trivial_ones(capsys):
    """Wang et al., ICCV 2023, Sec. 3 and Fig. 1: support prototypes of the two classes meet near the decision
    boundary, trivial ones lie apart, far from it. Measured after warm-up and joint training, before a push
    puts both sets on training cells."""
    from protobench_protopnet.recipe import protopnet_recipe

    from protobench.data.synthbirds import build_synthbirds
    from protobench.data.transforms import eval_transform, train_transform
    from protobench.runner.devices import seed_everything
    from protobench.runner.training import Step

    seed_everything(0)
    options = {"num_classes": 2, "images_per_class": 120, "resolution": 64}
    data = TrainData(train=build_synthbirds(None, "train", train_transform(64, 4), **options),
                     push=build_synthbirds(None, "train", eval_transform(64), **options),
                     test=build_synthbirds(None, "test", eval_transform(64), **options), num_classes=2)
    # from a random quick backbone (the stand-in takes minutes)
    config = {**SPEC.config("quick"), "weights": None, "num_classes": 2, "warm_epochs": 1, "train_epochs": 16,
              "push_start": 100}
    model = STProtoPNet(config)
    before = {b: cross_class_similarity(model, b) for b in ("trivial", "support")}
    phases = protopnet_recipe(config, st_protopnet_objective, after_step=renormalise)
    until_push = phases[: next(i for i, p in enumerate(phases) if isinstance(p, Step))]
    assert [p.name for p in until_push] == ["warm", "joint"]
    run_recipe(model, until_push, data, quiet, batch_size=config["batch_size"])
    test = [data.test[i] for i in range(len(data.test))]
    images, labels = torch.stack([t["image"] for t in test]), torch.tensor([t["label"] for t in test])
    with torch.no_grad():
        accuracy = float((model(images).argmax(1) == labels).float().mean())
    after = {b: cross_class_similarity(model, b) for b in ("trivial", "support")}
    with capsys.disabled():
        print(f"\n2-class synthbirds: accuracy {accuracy:.3f}; mean cosine between prototypes of different classes: "
              f"trivial {before['trivial']:.3f} -> {after['trivial']:.3f}, "
              f"support {before['support']:.3f} -> {after['support']:.3f}")
    assert accuracy > 0.7
    assert after["support"] > after["trivial"] + 0.05
    assert after["trivial"] < before["trivial"]  # discrimination pushed the trivial classes apart
