"""ProtoViT (plugins/protobench_protovit): greedy matching, slots, losses, push, regions, conformance."""

from __future__ import annotations

import math

import pytest
import torch
from protobench_protovit import losses as L
from protobench_protovit.model import ProtoViT, greedy_match, slot_scores, union_boxes
from protobench_protovit.plugin import SPEC
from protobench_protovit.push import push_prototypes

from protobench.api.contract import Explanation, TrainData
from protobench.explain.regions import prototype_regions, regions
from protobench.metrics.part_vectors import pair_part_vectors
from protobench.testing import check_model


def brute_force_greedy(sims: torch.Tensor, grid: tuple[int, int], radius: int) -> tuple[list, list, list]:
    """One prototype's greedy matching by enumeration of every (free sub-prototype, free cell in window) pair.

    ``sims [N, K]``; returns values and cells by sub-prototype index, and the placement order.
    """
    n, k = sims.shape
    w = grid[1]
    free_cells, free_subs, window = set(range(n)), set(range(k)), set(range(n))
    values, cells, order = [None] * k, [None] * k, []
    for _ in range(k):
        value, cell, sub = max((float(sims[c, s]), c, s) for c in free_cells & window for s in free_subs)
        values[sub], cells[sub] = value, cell
        order.append(sub)
        free_cells.discard(cell)
        free_subs.discard(sub)
        window = {c for c in range(n)
                  if abs(c // w - cell // w) <= radius and abs(c % w - cell % w) <= radius}
    return values, cells, order


@pytest.mark.parametrize("grid, k, radius", [((4, 4), 4, 1), ((3, 5), 3, 1), ((5, 5), 4, 2)])
def test_greedy_matching_equals_brute_force(grid, k, radius):
    sims = torch.rand(2, 5, grid[0] * grid[1], k, generator=torch.Generator().manual_seed(1)) * 2 - 1
    values, cells, order = greedy_match(sims, grid, radius)
    for b in range(2):
        for p in range(5):
            want_values, want_cells, want_order = brute_force_greedy(sims[b, p], grid, radius)
            assert cells[b, p].tolist() == want_cells
            assert order[b, p].tolist() == want_order
            torch.testing.assert_close(values[b, p], torch.tensor(want_values))


def test_each_match_lies_in_the_window_of_the_previous_one():
    grid, radius = (7, 7), 1
    sims = torch.rand(4, 50, 49, 4, generator=torch.Generator().manual_seed(2))
    _, cells, order = greedy_match(sims, grid, radius)
    placed = cells.gather(2, order)  # cells in the order they were taken
    row, col = placed // grid[1], placed % grid[1]
    assert ((row[..., 1:] - row[..., :-1]).abs() <= radius).all()
    assert ((col[..., 1:] - col[..., :-1]).abs() <= radius).all()
    assert (cells.sort(dim=2).values.diff(dim=2) > 0).all()  # a patch is taken once


def test_a_pruned_slot_contributes_nothing_to_the_score():
    values = torch.tensor([[[0.5, -0.3, 0.9, 0.2]]])
    slots = torch.tensor([[[1.0, 1.0, 0.0, 1.0]]])
    expected = (0.5 - 0.3 + 0.2) * 4 / 3
    torch.testing.assert_close(slot_scores(values, slots), torch.tensor([[expected]]))
    changed = values.clone()
    changed[..., 2] = -0.7
    torch.testing.assert_close(slot_scores(changed, slots), slot_scores(values, slots))


def tiny_model(**overrides) -> ProtoViT:
    torch.manual_seed(0)
    config = SPEC.config("quick", num_classes=3, weights=None, prototypes_per_class=2, **overrides)
    return ProtoViT(config).eval()


def test_a_hard_pruned_slot_in_the_model_removes_its_sub_prototype():
    model = tiny_model()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.patch_select[0, 0] = torch.tensor([200.0, -200.0, 200.0, 200.0])
        m = model.match(x)
    values = m["values"][:, 0]
    expected = (values[:, 0] + values[:, 2] + values[:, 3]) * 4 / 3
    torch.testing.assert_close(m["scores"][:, 0], expected)
    e = model.explain(x)
    assert not e.extra["active"][0, 1] and e.extra["active"][0].sum() == 3


def test_cluster_and_separation_by_hand():
    values = torch.tensor([[[0.2, 0.9], [-0.4, 0.1], [0.3, 0.6]],
                           [[-0.5, -0.2], [-0.1, -0.3], [0.7, 0.4]]])  # [B=2, P=3, K=2]
    classes, labels = torch.tensor([0, 0, 1]), torch.tensor([0, 1])
    # image 0: own prototypes 0, 1 -> 0.9; others: prototype 2 -> 0.6 (the masked zeros take part: max(0, .))
    # image 1: own prototype 2 -> 0.7; others 0, 1 all negative -> the masked zeros win: 0
    torch.testing.assert_close(L.cluster_cost(values, labels, classes), torch.tensor((0.9 + 0.7) / 2))
    torch.testing.assert_close(L.separation_cost(values, labels, classes), torch.tensor((0.6 + 0.0) / 2))


def test_orthogonality_by_hand():
    prototypes = torch.zeros(4, 2, 2)  # 2 classes x 2 prototypes, D = 2, K = 2
    prototypes[0, :, 0], prototypes[0, :, 1] = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 1.0])
    prototypes[1, :, 0], prototypes[1, :, 1] = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])
    prototypes[2:, 0, :] = 1.0  # class 1: every sub-prototype (1, 0)
    # class 0: sub-prototypes (1,0),(0,1) and (.7071,.7071),(0,1): Gram [[2, 1.7071], [1.7071, 2]]
    class0 = 1 + 1 + 2 * (1 + 1 / math.sqrt(2))
    class1 = 1 + 2 + 2 + 1  # Gram all 2; minus I
    torch.testing.assert_close(L.orthogonality_cost(prototypes, 2), torch.tensor(class0 + class1))


def test_coherence_is_the_codes_distance_to_the_last_sub_prototype():
    prototypes = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]])  # P=1, D=2, K=3: (1,0), (0,1), (2,0)
    slots = torch.tensor([[[1.0, 0.5, 1.0]]])
    # distances to the last sub-prototype: 0, 1, 0; slot-weighted: 0, 0.5, 0 -> max 0.5 (all pairs: 1)
    torch.testing.assert_close(L.coherence_cost(prototypes, slots), torch.tensor(0.5))


def test_wrong_class_l1_and_the_official_coefficients():
    weight = torch.tensor([[1.0, -0.5, 2.0], [-3.0, 0.25, 4.0]])
    classes = torch.tensor([0, 1, 1])
    torch.testing.assert_close(L.wrong_class_l1(weight, classes), torch.tensor(0.5 + 2.0 + 3.0))
    assert L.COEFFICIENTS == {"cross_entropy": 1.0, "cluster": -0.8, "separation": 0.1, "l1": 1e-2,
                              "orthogonality": 1e-3, "coherence": 3e-3}
    assert L.SLOTS_COHERENCE == 1e-6


def test_push_sets_kept_sub_prototypes_to_their_matched_tokens_and_pruned_ones_to_zero():
    model = tiny_model()
    with torch.no_grad():
        model.patch_select[0, :, 1] = -0.5  # slot 0.0: pruned
        model.patch_select[0, 0, 2] = 0.0  # slot exactly 0.5: rounds to 0 (pruned)
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    items = [{"image": images[i], "label": i % 3, "index": 10 + i} for i in range(6)]
    push_prototypes(model, TrainData(train=items, push=items, test=items, num_classes=3), lambda it, **_: it,
                    batch_size=4)
    slots = model.slots()[0]
    assert set(slots.unique().tolist()) <= {0.0, 1.0} and slots[:, 1].eq(0).all() and slots[0, 2] == 0
    with torch.no_grad():
        m = model.match(images)
    for p in range(model.num_prototypes):
        index = int(model.prototype_sources[p, 0]) - 10
        assert index % 3 == int(model.prototype_classes[p])
        z = m["latent"][index].flatten(1)
        for k in range(4):
            cell = int(model.prototype_source_cells[p, k])
            if slots[p, k] == 0:
                assert cell == -1 and model.prototype_vectors[p, :, k].eq(0).all()
            else:
                torch.testing.assert_close(model.prototype_vectors[p, :, k], z[:, cell])


def test_regions_hook_gives_the_union_of_active_patches_and_consistency_uses_it():
    model = tiny_model()
    b, p, (h, w) = 1, model.num_prototypes, model.grid
    cells = torch.tensor([0, 1, 63, 8]).repeat(b, p, 1)  # (0,0), (0,1), (7,7), (1,0)
    active = torch.ones(p, 4, dtype=torch.bool)
    active[:, 2] = False  # the (7,7) sub-prototype is pruned
    maps = torch.zeros(b, p, h, w)
    maps[..., 4, 4] = 1.0  # the default region would sit around the map's peak, at the centre
    e = Explanation(logits=torch.zeros(b, 3), similarities=maps,
                    extra={"patch_indices": cells, "active": active, "grid": (h, w)})
    boxes = prototype_regions(model, e, (64, 64))
    assert boxes[0, 0].tolist() == [0, 0, 15, 15]  # cells (0,0), (0,1), (1,0) at 8 px each
    assert regions(maps, (64, 64))[0, 0].tolist() != [0, 0, 15, 15]
    keypoints = torch.tensor([[[14.0, 15.0, 1.0], [36.0, 36.0, 1.0], [60.0, 60.0, 1.0]]])
    vectors = pair_part_vectors(model, e, keypoints, torch.tensor([[0, 0]]), (64, 64))
    # in the union's box; not at the map's peak; not at the pruned sub-prototype's patch
    assert vectors.tolist() == [[True, False, False]]


def test_union_boxes_with_every_slot_pruned_fall_back_to_all_matched_cells():
    cells = torch.tensor([[[9, 10, 17, 18]]])
    boxes = union_boxes(cells, torch.zeros(1, 4, dtype=torch.bool), (8, 8), (64, 64))
    assert boxes.tolist() == [[[8, 8, 23, 23]]]


def test_explain_map_peaks_at_the_score_on_the_matched_active_cells():
    model = tiny_model()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        e, m = model.explain(x), model.match(x)
    torch.testing.assert_close(e.similarities.flatten(2).amax(2), m["scores"])
    on = e.similarities.flatten(2) > -4
    assert on.sum(2).eq(4).all()
    assert on.gather(2, e.extra["patch_indices"]).all()
    torch.testing.assert_close(e.logits, model(x))


def test_latent_grid_is_patch_tokens_minus_cls_row_major():
    model = tiny_model()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        vit = model.features
        tokens = super(type(vit), vit).forward_features(model.normalize(x))
        z = model.latent(x)
    assert z.shape == (1, vit.embed_dim, 8, 8)
    torch.testing.assert_close(z[0, :, 2, 5], tokens[0, 1 + 2 * 8 + 5] - tokens[0, 0])


def test_protovit_keeps_the_contract_and_its_recipe_runs():
    assert check_model("protovit", metrics=False) == []


@pytest.mark.slow
def test_protovit_passes_the_conformance_kit_with_every_default_metric():
    assert check_model("protovit") == []
