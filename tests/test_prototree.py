"""ProtoTree: routing, leaves, inference modes, contributions, pruning, projection, checkpoints, decision paths."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from protobench_prototree import tree
from protobench_prototree.leaves import DerivativeFreeLeaves, derivative_free_update, leaf_distributions
from protobench_prototree.model import ProtoTree
from protobench_prototree.plugin import SPEC
from protobench_prototree.project import project_prototypes
from protobench_prototree.prune import nodes_to_prune, prune_tree
from protobench_prototree.recipe import MultiStepSchedule, prototree_recipe
from torch import nn

from protobench.api.contract import TrainData
from protobench.api.plugins import registry
from protobench.runner import checkpoint
from protobench.runner.training import run_recipe


def quiet(iterable, desc="", total=None):
    return iterable


def tiny_config(**overrides):
    tiny = {"num_classes": 3, "input_size": 16, "depth": 2, "num_features": 3, "weights": None}
    return SPEC.config("quick", **{**tiny, **overrides})


def identity_tree(**overrides) -> ProtoTree:
    """A ProtoTree whose latent grid is the input itself (3 channels), for hand-computed checks."""
    torch.manual_seed(0)
    model = ProtoTree(tiny_config(**overrides))
    model.normalize = model.features = model.add_on_layers = nn.Identity()
    return model.eval()


def test_routing_of_a_depth_2_tree_by_hand():
    model = identity_tree()
    x = torch.zeros(1, 3, 1, 2)
    x[0, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    with torch.no_grad():
        model.prototype_vectors.copy_(torch.tensor([[0.0, 0, 0], [1, 1, 0], [3, 0, 4]])[:, :, None, None])
    routing = model.route(x)
    d = torch.tensor([0.0, 1.0, math.sqrt(4 + 16)])  # min over the two patches, not squared
    assert routing.distances[0, :, 0, 1].tolist() == pytest.approx([1.0, 1.0, math.sqrt(20)], abs=1e-5)
    s = torch.exp(-d)
    assert routing.right[0].tolist() == pytest.approx(s.tolist(), abs=1e-5)
    expected = [1, 1 - s[0], s[0], (1 - s[0]) * (1 - s[1]), (1 - s[0]) * s[1], s[0] * (1 - s[2]), s[0] * s[2]]
    assert routing.arrive[0].tolist() == pytest.approx([float(e) for e in expected], abs=1e-5)
    log_model = identity_tree(log_probabilities=True)
    log_model.prototype_vectors = model.prototype_vectors
    assert log_model.route(x).arrive[0].exp().tolist() == pytest.approx([float(e) for e in expected], abs=1e-5)


def test_derivative_free_update_by_hand():
    arrive = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    stub = SimpleNamespace(leaf_params=torch.zeros(4, 2), log_probabilities=False)
    stub.leaf_distributions = lambda: leaf_distributions(stub.leaf_params, kontschieder=False, log=False)
    leaves = DerivativeFreeLeaves(batches_per_epoch=2)
    labels = torch.tensor([0])
    # uniform leaves: the prediction is (0.5, 0.5), so leaf l gains arrive_l * 0.5 * 1 / 0.5 on class 0
    leaves(stub, arrive, arrive @ stub.leaf_distributions(), labels)
    assert torch.allclose(stub.leaf_params, torch.tensor([[0.4, 0], [0.3, 0], [0.2, 0], [0.1, 0]]))
    # second batch of the epoch: the epoch-start parameters (zeros) are subtracted, the new update added
    sig = torch.sigmoid(arrive[0])  # softmax([a, 0])[0]
    prediction = float((arrive[0] * sig).sum())
    leaves(stub, arrive, arrive @ stub.leaf_distributions(), labels)
    expected = arrive[0] + arrive[0] * sig / prediction
    assert stub.leaf_params[:, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert stub.leaf_params[:, 1].tolist() == [0, 0, 0, 0]
    # a new epoch decays the previous epoch's parameters by 1 / batches_per_epoch
    start = stub.leaf_params.clone()
    update = derivative_free_update(arrive, stub.leaf_distributions(), torch.tensor([[1.0, 0]]),
                                    arrive @ stub.leaf_distributions(), log=False)
    leaves(stub, arrive, arrive @ stub.leaf_distributions(), labels)
    assert torch.allclose(stub.leaf_params, start / 2 + update, atol=1e-6)


def test_log_update_equals_the_plain_update():
    torch.manual_seed(1)
    arrive = torch.rand(5, 4).softmax(1)
    dist = torch.rand(4, 3).softmax(1)
    target = torch.eye(3)[torch.tensor([0, 1, 2, 1, 0])]
    plain = derivative_free_update(arrive, dist, target, arrive @ dist, log=False)
    logged = derivative_free_update(arrive.log(), dist.log(), target, (arrive @ dist).log(), log=True)
    assert torch.allclose(plain, logged, atol=1e-6)


def certain_tree(mode: str) -> tuple[ProtoTree, torch.Tensor]:
    """Prototypes equal to a patch of the image (similarity 1) or far from every patch (similarity ~0)."""
    model = identity_tree(depth=3, inference=mode)
    x = torch.rand(4, 3, 2, 2)
    with torch.no_grad():
        model.leaf_params.normal_()
        vectors = torch.full((7, 3), 40.0)
        vectors[0] = x[0, :, 1, 0]
        vectors[2] = x[0, :, 0, 1]
        model.prototype_vectors.copy_(vectors[:, :, None, None])
    return model, x[:1]


def test_soft_greedy_and_sample_max_agree_where_routing_is_certain():
    outputs = {}
    for mode in ("distributed", "greedy", "sample_max"):
        model, x = certain_tree(mode)
        with torch.no_grad():
            outputs[mode] = model.explain(x)
    assert torch.allclose(outputs["distributed"].logits, outputs["greedy"].logits, atol=1e-4)
    assert torch.allclose(outputs["sample_max"].logits, outputs["greedy"].logits, atol=1e-4)
    extra = outputs["greedy"].extra
    assert extra["path_nodes"][0].tolist() == [0, 2, 6] and extra["path_right"][0].tolist() == [True, True, False]
    assert int(extra["leaf"][0]) == 6


@pytest.mark.parametrize("mode", ["distributed", "greedy", "sample_max"])
def test_contributions_add_up_to_the_prediction_minus_the_root_value(mode):
    torch.manual_seed(2)
    model = identity_tree(depth=3, inference=mode)
    model.prune([4])
    with torch.no_grad():
        model.leaf_params.normal_()
        explanation = model.explain(torch.rand(3, 3, 2, 2))
        root = model.node_values(model.leaf_distributions())[0]
    assert explanation.contributions.shape == (3, model.num_prototypes, 3)
    total = explanation.contributions.sum(dim=1)
    assert torch.allclose(total, explanation.logits.exp() - root, atol=1e-5)
    if mode != "distributed":
        on_path = torch.zeros(3, model.num_prototypes, dtype=torch.bool)
        for b, slots in enumerate(explanation.extra["path_prototype"]):
            on_path[b, slots[slots >= 0]] = True
        assert explanation.contributions[~on_path].abs().max() == 0


def test_similarity_maps_peak_at_the_routing_probability():
    model = identity_tree(depth=3)
    with torch.no_grad():
        explanation = model.explain(torch.rand(2, 3, 4, 4))
    assert explanation.similarities.shape == (2, 7, 4, 4) and (model.prototype_classes == -1).all()
    peak = explanation.similarities.flatten(2).max(2).values
    on_path = peak.gather(1, explanation.extra["path_prototype"])
    assert torch.allclose(on_path, explanation.extra["path_similarity"], atol=1e-6)


def test_pruning_selects_the_topmost_weak_subtrees_of_a_hand_made_tree():
    strong, weak = [0.9, 0.1], [0.55, 0.45]
    dist = torch.tensor([strong, strong, weak, weak, strong, strong, strong, weak])  # depth 3: leaves are nodes 7..14
    assert nodes_to_prune(dist, 3, threshold=0.6) == [4, 14]
    routing = tree.routing_after_pruning(3, [4, 14])
    assert routing.tolist() == [-1, 0, -1, -1, -1, -1, 0]  # node 1 forwards to node 3, node 6 to node 13
    assert tree.kept_nodes(routing).tolist() == [0, 2, 3, 5]
    # the rewired tree: leaf 0 is reached through the root and node 3 only; leaf 5 through nodes 0, 2, 6 (forced)
    s = torch.tensor([[0.3, 0.9, 0.6, 0.2, 0.8, 0.7, 0.4]])
    arrive = tree.arrival_probabilities(tree.right_probabilities(s, routing))[0, 7:]
    assert arrive[0].item() == pytest.approx(0.7 * 0.8) and arrive[2:4].tolist() == [0, 0]
    assert arrive[6].item() == pytest.approx(0.3 * 0.6) and arrive[7].item() == 0
    assert arrive.sum().item() == pytest.approx(1.0)
    # a subtree whose parent is the root is kept (the root is never removed)
    assert tree.routing_after_pruning(3, [1]).tolist() == [-1] * 7


def test_prune_tree_removes_weak_subtrees_with_their_parent():
    model = identity_tree(depth=3)
    with torch.no_grad():
        model.leaf_params.copy_(torch.tensor([[10.0, 0, 0]] * 8))
        model.prototype_sources.copy_(torch.arange(7)[:, None].expand(7, 3))
    assert prune_tree(model, 0.01) == (7, 7)
    with torch.no_grad():
        model.leaf_params[2:4] = 0  # uniform leaves (max 1/3) under node 4
    assert prune_tree(model, 0.5) == (7, 5)
    assert model.config["pruned_nodes"] == [4] and model.prototype_nodes.tolist() == [0, 2, 3, 5, 6]
    assert model.prototype_sources[:, 0].tolist() == [0, 2, 3, 5, 6]
    model.prune([])  # undoing the pruning: the removed nodes come back without a source
    assert model.prototype_sources[:, 0].tolist() == [0, -1, 2, 3, -1, 5, 6]


def push_data(n=6, size=3):
    torch.manual_seed(3)
    items = [{"image": torch.rand(3, size, size), "label": i % 2, "index": 10 + i} for i in range(n)]
    return TrainData(train=items, push=items, test=items, num_classes=2)


def test_projection_leaves_each_prototype_equal_to_an_allowed_training_patch():
    model = identity_tree(depth=3, num_classes=2)
    model.prune([4])
    with torch.no_grad():
        model.leaf_params.copy_(torch.tensor([[1.0, 0], [0, 1]] * 4))  # even leaves: class 0, odd: class 1
    data = push_data()
    project_prototypes(model, data, quiet, batch_size=4)
    images = {item["index"]: item for item in data.push}
    for p, node in enumerate(model.prototype_nodes.tolist()):
        index, row, col = model.prototype_sources[p].tolist()
        assert torch.equal(model.prototype_vectors[node, :, 0, 0], images[index]["image"][:, row, col])
    # node 3's leaves (0 and 1) allow both classes; node 5's (leaves 4, 5) too; all nodes found a patch
    assert (model.prototype_sources[:, 0] >= 10).all()


def test_projection_respects_the_class_constraint():
    model = identity_tree(depth=2, num_classes=2)  # zero leaves: every argmax is class 0
    data = push_data()
    project_prototypes(model, data, quiet, batch_size=4)
    labels = {item["index"]: item["label"] for item in data.push}
    assert all(labels[int(i)] == 0 for i in model.prototype_sources[:, 0])


def test_a_saved_and_reloaded_pruned_model_gives_identical_outputs(tmp_path):
    torch.manual_seed(4)
    model = ProtoTree(tiny_config(depth=3)).eval()
    with torch.no_grad():
        model.leaf_params.normal_()
    model.prune([4])
    model.prototype_sources[1] = torch.tensor([5, 0, 1])
    checkpoint.save(model, "prototree", tmp_path)
    loaded = checkpoint.load(tmp_path, registry())
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        a, b = model.explain(x), loaded.explain(x)
    assert loaded.num_prototypes == model.num_prototypes == 5
    assert torch.equal(a.logits, b.logits) and torch.equal(a.similarities, b.similarities)
    assert torch.equal(a.contributions, b.contributions)
    assert torch.equal(loaded.prototype_sources, model.prototype_sources)


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="inference"):
        ProtoTree(tiny_config(inference="vote"))
    with pytest.raises(ValueError, match="leaf_optimisation"):
        ProtoTree(tiny_config(leaf_optimisation="em"))


def test_multistep_schedule_counts_milestones_like_multisteplr():
    schedule = MultiStepSchedule((2, 4), 0.5, offset=1)
    assert [schedule.factor(e) for e in range(5)] == [1, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize("leaf_optimisation", ["derivative_free", "gradient"])
def test_recipe_trains_prunes_and_projects(leaf_optimisation):
    torch.manual_seed(5)
    config = tiny_config(num_classes=2, epochs=2, freeze_epochs=1, leaf_optimisation=leaf_optimisation,
                         pruning_threshold=0.01)
    model = ProtoTree(config)
    items = [{"image": torch.full((3, 16, 16), float(i % 2)), "label": i % 2, "index": i} for i in range(8)]
    data = TrainData(train=items, push=items, test=items, num_classes=2)
    leaves_before = model.leaf_params.detach().clone()
    phases = prototree_recipe(config, batches_per_epoch=2)
    assert [p.name for p in phases] == ["frozen", "joint", "prune", "project"]
    logs = run_recipe(model, phases, data, quiet, batch_size=4)
    assert [log.phase for log in logs] == ["frozen", "joint"]
    assert not torch.equal(model.leaf_params, leaves_before)
    assert (model.prototype_sources[:, 0] >= 0).all()


def test_decision_path_text_and_picture(tmp_path):
    model, x = certain_tree("greedy")
    item = {"image": x[0], "label": 1, "index": 7}
    text = model.describe(item, class_names=["a", "b", "c"])
    assert "node 0 (prototype 0, not projected): similarity 1.000" in text and "-> right (present)" in text
    assert "node 6 (prototype 6" in text and "-> left (absent)" in text and "leaf 6:" in text
    out = model.draw_explanation(item, str(tmp_path / "path.png"), push=None)
    assert out.stat().st_size > 0


@pytest.mark.parametrize("mode", ["distributed", "greedy", "sample_max"])
def test_logits_stay_finite_when_leaf_probabilities_underflow(mode):
    model = identity_tree(depth=2, inference=mode)
    with torch.no_grad():
        model.leaf_params.copy_(torch.tensor([[500.0, 0, 0]] * 4))
        logits = model.explain(torch.rand(2, 3, 2, 2)).logits
    assert torch.isfinite(logits).all() and (logits.argmax(1) == 0).all()
    assert logits[0, 1].item() == pytest.approx(-500, abs=1e-3)


def test_cli_explain_prints_and_draws_the_decision_path(tmp_path, capsys):
    from protobench import cli
    from protobench.runner import harness

    torch.manual_seed(6)
    model = ProtoTree(tiny_config(num_classes=24, input_size=32)).eval()
    settings = harness.Settings(workdir=tmp_path)
    checkpoint.save(model, "prototree", settings.checkpoint_dir(harness.identity(registry(), "prototree", settings)))
    out = tmp_path / "path.png"
    common = ["--model", "prototree", "--workdir", str(tmp_path), "--device", "cpu"]
    assert cli.main(["explain", *common, "--index", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "greedy decision path of image #3" in printed and "leaf " in printed and out.stat().st_size > 0
    assert cli.main(["explain", *common, "--index", "100000"]) == 2
    assert "outside the test split" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["greedy", "sample_max"])
def test_hard_modes_pass_the_soft_gradient_straight_through(mode):
    model = identity_tree(depth=3, inference=mode)
    model.prune([4])  # a pruned side has arrival exactly 0: its log must not turn the gradient into NaN
    with torch.no_grad():
        model.leaf_params.normal_()
    x = torch.rand(2, 3, 2, 2, requires_grad=True)
    logits = model.explain(x).logits
    leaf = model.explain(x.detach()).extra["leaf"]
    log_dist = torch.log_softmax(model.leaf_params.detach(), dim=1)
    assert torch.equal(logits.detach(), log_dist[leaf])
    soft = model.explain(x, "distributed").logits
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    (soft_grad,) = torch.autograd.grad(soft[:, 0].sum(), x)
    assert torch.allclose(grad, soft_grad) and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gallery_reads_stored_consistency_and_because_records(tmp_path, monkeypatch):
    """``model_gallery`` turns the stored records into each prototype's verdict and "because" influences."""
    from protobench.explain.because import CHARACTERISTICS
    from protobench.report import gallery
    from protobench.runner import harness
    torch.manual_seed(6)
    model = ProtoTree(tiny_config(num_classes=24, input_size=32)).eval()
    settings = harness.Settings(workdir=tmp_path, device="cpu", dataset_options={"images_per_class": 4})
    run = harness.identity(registry(), "prototree", settings)
    checkpoint.save(model, "prototree", settings.checkpoint_dir(run))
    p = model.num_prototypes
    key = lambda metric: settings.record_key(run, metric)
    influence = {name: [0.1 * (i + 1) + p_ for p_ in range(p)] for i, name in enumerate(CHARACTERISTICS)}
    settings.store.put(key("because"), {"value": 0.5, "detail": {"characteristics": list(CHARACTERISTICS),
                                                                 "per_prototype": influence}})
    settings.store.put(key("consistency"), {"value": 0.0, "detail": {"per_prototype": {
        "consistent": [False] * p, "part": ["wing"] * p, "max_part_frequency": [0.25] * p}}})
    seen = {}
    monkeypatch.setattr(gallery, "write_gallery", lambda *args, **kwargs: seen.update(kwargs) or [])
    gallery.model_gallery(registry(), "prototree", settings, tmp_path / "gallery", progress=None)
    assert seen["influences"][2] == {name: 0.1 * (i + 1) + 2 for i, name in enumerate(CHARACTERISTICS)}
    assert seen["verdicts"][1] == "inconsistent: wing in 25% of its class's images"
