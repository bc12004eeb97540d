"""FunnyBirds protocols on a tiny synthbirds whose birds never move, with toy models known by construction."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.data.synthbirds import PART_NAMES, build_synthbirds
from protobench.data.synthbirds_classes import (
    PALETTE,
    classes,
    classes_at_distance,
    contrast_classes,
    differing_parts,
    minimal_sufficient_part_sets,
    shared_parts,
)
from protobench.metrics.funnybirds import (
    FUNNYBIRDS_METRICS,
    Completeness,
    Contrastivity,
    irrelevant,
    relevant,
    single_deletion_correlation,
)
from protobench.metrics.funnybirds_pass import (
    OPTION_KEY,
    THRESHOLDS,
    FunnyBirdsPass,
    ImageOutcome,
    _contrast_assumption,
)

#: Two classes (blue plain wing, blue barred wing) that differ in the wing only; birds in a fixed pose,
#: flat light, no twig: the wing covers the same pixels in every image and its colours are exact.
STILL = {"num_classes": 2, "images_per_class": 4, "test_fraction": 0.5, "resolution": 32, "scale_range": (1, 1),
         "max_rotation": 0, "max_shift": 0, "flip": False, "occluder_probability": 0, "lighting": 0}


@pytest.fixture(scope="module")
def birds():
    return build_synthbirds(None, "test", **STILL)


def colour_share(images: Tensor, colour: str, mask: Tensor) -> Tensor:
    """Per image and pixel, 1 where the pixel has the palette colour exactly, within ``mask``."""
    target = torch.tensor(PALETTE[colour], dtype=torch.float32)[:, None, None] / 255
    return ((images - target).abs().amax(1) < 0.5 / 255).float() * mask


class WingReader(PrototypeModel):
    """Reads the wing only: logit 0 = blue share of the wing's pixels (minus 0.1), logit 1 = 3 x black share.

    Prototype 0 (class 0) lights up on blue wing pixels, prototype 1 (class 1) on black ones; both regions are
    the wing's box (the ``regions`` hook).
    """

    def __init__(self, wing: Tensor):
        super().__init__()
        self.num_classes, self.input_size, self.config = 2, wing.shape, {}
        self.register_buffer("prototype_classes", torch.tensor([0, 1]))
        self.wing = wing.float()
        ys, xs = wing.nonzero(as_tuple=True)
        self.box = torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()])

    def explain(self, x: Tensor) -> Explanation:
        shares = torch.stack([colour_share(x, "blue", self.wing), colour_share(x, "black", self.wing)], 1)
        fractions = shares.sum((2, 3)) / self.wing.sum()
        contributions = torch.diag_embed(fractions * torch.tensor([1.0, 3.0]))
        logits = contributions.sum(1) - torch.tensor([0.1, 0.0])
        return Explanation(logits, F.avg_pool2d(shares, 4), contributions)

    def regions(self, explanation: Explanation, image_size: tuple[int, int]) -> Tensor:
        return self.box.expand(len(explanation.logits), 2, 4)


class Constant(PrototypeModel):
    """Ignores its input: logits (1, 0) for every image; a black box (no prototypes)."""

    def __init__(self):
        super().__init__()
        self.num_classes, self.input_size, self.config = 2, (32, 32), {}
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))
        self.bias = torch.nn.Parameter(torch.tensor([1.0, 0.0]))

    def explain(self, x: Tensor) -> Explanation:
        logits = self.bias.expand(len(x), 2) + 0 * x.sum((1, 2, 3))[:, None]
        return Explanation(logits, x.new_zeros(len(x), 0, 1, 1))


class BackgroundReader(Constant):
    """Reads the background only: its evidence is the share of non-bird pixels showing an object's colour."""

    def __init__(self, bird: Tensor):
        super().__init__()
        self.outside = (~bird).float()

    def explain(self, x: Tensor) -> Explanation:
        colours = ("red", "blue", "yellow", "green", "slate", "cream", "brown", "orange", "white")
        objects = sum(colour_share(x, c, self.outside) for c in colours).sum((1, 2)) / self.outside.sum()
        objects = objects + 0 * x.sum((1, 2, 3))  # piecewise constant: Integrated Gradients gives 0
        return Explanation(objects[:, None] * torch.tensor([2.0, 1.0]), x.new_zeros(len(x), 0, 1, 1))


def evaluate(model: PrototypeModel, dataset, batch_size: int = 2) -> dict:
    context = EvalContext(dataset=dataset, device=torch.device("cpu"))
    states = {spec.name: spec.compute(model, context) for spec in FUNNYBIRDS_METRICS}
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        batch = {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}
        with torch.no_grad():
            explanation = model.explain(batch["image"])
        for state in states.values():
            state.update(batch, explanation)
    results = {name: state.compute() for name, state in states.items()}
    results["pass"] = context.options[OPTION_KEY]
    return results


def test_minimal_sufficient_part_sets_follow_the_class_table():
    assert minimal_sufficient_part_sets(classes(2), 0) == [frozenset({"wing"})]
    table = classes(24)  # crown is red or blue, each arrangement plain or barred
    for target in range(24):
        sets = minimal_sufficient_part_sets(table, target)
        for part_set in sets:
            others = [c for c in table if c.index != target and not set(differing_parts(c, table[target])) & part_set]
            assert not others  # sufficient: no other class looks the same on these parts
            for part in part_set:  # minimal: dropping any part lets another class in
                smaller = part_set - {part}
                assert any(not set(differing_parts(c, table[target])) & smaller
                           for c in table if c.index != target)
    # class 0: crown red, wing blue, breast yellow, tail green, plain wing
    assert set(minimal_sufficient_part_sets(table, 0)) == {frozenset({"wing", "breast"}), frozenset({"wing", "tail"})}


def test_contrast_classes_each_share_two_disjoint_parts_with_the_target():
    table = classes(24)
    for target in range(24):
        first, second = contrast_classes(table, target)
        a, b = shared_parts(table, target, first), shared_parts(table, target, second)
        assert len(a) == len(b) == 2 and a.isdisjoint(b)
    assert contrast_classes(classes(2), 0) is None
    assert classes_at_distance(classes(2), 0, 1) == [1]


def test_relevance_needs_a_five_percent_drop():
    original = torch.tensor(10.0)
    assert relevant(original, torch.tensor([9.0, 9.6, 10.5, 9.5])).tolist() == [True, False, False, True]
    assert relevant(torch.tensor(-10.0), torch.tensor([-10.4, -10.6])).tolist() == [False, True]
    assert irrelevant(original, torch.tensor([9.0, 9.6, 10.5, 9.5])).tolist() == [False, True, True, False]
    # distractibility_protocol: a part whose removal leaves a score of 0 at 0 is not irrelevant (neither
    # |0| < |0.05 * 0| nor 0 < 0), and background_independence_protocol does not count it as relevant either
    zero = torch.tensor(0.0)
    assert irrelevant(zero, torch.tensor([0.0, 0.5, -0.5])).tolist() == [False, True, False]
    assert relevant(zero, torch.tensor([0.0, 0.5, -0.5])).tolist() == [False, False, True]


def test_single_deletion_correlation_is_spearman_and_nan_when_constant():
    assert single_deletion_correlation(np.array([3.0, 1, 2]), np.array([30.0, 10, 20])) == pytest.approx(1)
    assert single_deletion_correlation(np.array([3.0, 1, 2]), np.array([1.0, 5, 2])) == pytest.approx(-1)
    assert np.isnan(single_deletion_correlation(np.zeros(3), np.array([1.0, 2, 3])))


def test_background_objects_and_maps_follow_the_rendering(birds):
    full = birds.render(1)
    parts, objects = birds.maps(1)
    assert np.array_equal(parts.numpy(), full.part_map) and np.array_equal(objects.numpy(), full.object_map)
    assert birds.background_objects(1) == tuple(range(len(full.objects)))  # no twig in STILL
    small_parts, _ = birds.maps(1, (16, 16))
    assert small_parts.shape == (16, 16) and set(small_parts.unique().tolist()) <= set(parts.unique().tolist())


def test_wing_reader_scores_follow_from_the_class_table(birds):
    wing = birds.maps(0)[0] == PART_NAMES.index("wing") + 1
    model = WingReader(wing)
    assert [int(model(birds[i]["image"][None]).argmax()) for i in range(len(birds))] == [0, 1, 0, 1]
    results = evaluate(model, birds)
    # background objects lie behind the bird, so they never touch the wing's pixels
    assert results["funnybirds_bi"].value == 1.0
    completeness = results["funnybirds_completeness"].detail
    curves = completeness["curves"]
    # the minimal sufficient set is {wing}; the wing lies inside the prototypes' regions at every threshold
    assert curves["csdc"] == [1.0] * len(THRESHOLDS)
    # keeping the important parts keeps the wing: the prediction survives
    assert curves["pc"] == [1.0] * len(THRESHOLDS)
    # removing the wing leaves logits (-0.1, 0): class 1, a change for the class-0 images only
    assert curves["dc"] == [0.5] * len(THRESHOLDS)
    # only the wing matters, so the explanation calls ever fewer irrelevant parts important as t grows
    assert all(a <= b for a, b in zip(curves["d"], curves["d"][1:]))
    assert results["funnybirds_completeness"].value == pytest.approx(
        ((completeness["csdc"] + completeness["pc"] + completeness["dc"]) / 3 + completeness["d"]) / 2)
    # the wing has both the only logit drop and the largest importance
    assert results["funnybirds_correctness"].value > 0.5
    outcome = results["pass"]._outcomes[0]
    assert int(outcome.importance.argmax()) == PART_NAMES.index("wing")
    drops = outcome.logits[outcome.label] - outcome.part_removed[:, outcome.label]
    assert drops.nonzero().flatten().tolist() == [PART_NAMES.index("wing")]
    # two classes cannot give a pair of contrast classes
    assert results["funnybirds_contrastivity"].value is None


def test_model_ignoring_the_input(birds):
    results = evaluate(Constant(), birds)
    assert results["funnybirds_bi"].value == 1.0
    completeness = results["funnybirds_completeness"]
    # Integrated Gradients is 0: nothing is important; the prediction never changes; nothing distracts
    assert (completeness.detail["csdc"], completeness.detail["pc"], completeness.detail["dc"],
            completeness.detail["d"]) == (0.0, 1.0, 0.0, 1.0)
    assert completeness.value == pytest.approx(2 / 3)
    assert completeness.detail["csdc_images"] == 2  # the class-0 images are the correct ones
    assert results["funnybirds_correctness"].value is None  # no logit drop anywhere: no rank correlation
    assert results["funnybirds_correctness"].detail["skipped"] == len(birds)


def test_model_reading_the_background_depends_on_it(birds):
    bird = birds.maps(0)[0] > 0
    results = evaluate(BackgroundReader(bird), birds)
    bi = results["funnybirds_bi"]
    assert bi.value < 1.0 and bi.detail["objects"] == sum(len(birds.background_objects(i)) for i in range(4))


def test_the_protocols_share_one_set_of_interventions(birds):
    wing = birds.maps(0)[0] == PART_NAMES.index("wing") + 1
    shared = evaluate(WingReader(wing), birds, batch_size=4)["pass"]
    assert len(shared.log) == len(set(shared.log))
    per_image = len(PART_NAMES) + sum(len(birds.background_objects(i)) for i in range(4)) / 4
    assert len(shared.log) <= 4 * (per_image + 2 * len(PART_NAMES))  # singles + distinct PC / DC sets


def test_states_reduce_across_shards_like_one_pass(birds):
    """What torchrun does: each process sees a shard; the reduced states equal one pass over all images."""
    model = WingReader(birds.maps(0)[0] == PART_NAMES.index("wing") + 1)
    whole = evaluate(model, birds)
    halves = [evaluate_states(model, birds, shard) for shard in (range(0, 4, 2), range(1, 4, 2))]
    for spec in FUNNYBIRDS_METRICS:
        merged = halves[0][spec.name]
        merged.merge_state(halves[1][spec.name])
        result, expected = merged.compute(), whole[spec.name]
        assert (result.value is None) == (expected.value is None)
        assert result.value == pytest.approx(expected.value)
        if spec.name == "funnybirds_completeness":
            for name, curve in expected.detail["curves"].items():
                assert result.detail["curves"][name] == pytest.approx(curve)


def test_intervals_cover_the_value_and_do_not_depend_on_the_batches(birds):
    """Each image's resample counts follow it (by its dataset index), whatever batch it arrives in."""
    wing = WingReader(birds.maps(0)[0] == PART_NAMES.index("wing") + 1)
    background = BackgroundReader(birds.maps(0)[0] > 0)
    for model, name in ((wing, "funnybirds_completeness"), (background, "funnybirds_bi")):
        runs = [evaluate(model, birds, batch_size=size) for size in (4, 1, 3)]
        result = runs[0][name]
        low, high = result.interval
        assert low <= result.value <= high and low < high  # a non-trivial value with a spread
        assert 0 < result.value < 1
        for other in runs[1:]:
            for spec in FUNNYBIRDS_METRICS:
                assert other[spec.name].value == pytest.approx(runs[0][spec.name].value)
                if runs[0][spec.name].interval is None:
                    assert other[spec.name].interval is None
                else:
                    assert other[spec.name].interval == pytest.approx(runs[0][spec.name].interval)


def evaluate_states(model: PrototypeModel, dataset, indices) -> dict:
    """The protocol states after feeding the images ``indices`` one at a time (not computed)."""
    context = EvalContext(dataset=dataset, device=torch.device("cpu"))
    states = {spec.name: spec.compute(model, context) for spec in FUNNYBIRDS_METRICS}
    for i in indices:
        item = dataset[i]
        batch = {key: torch.as_tensor(value)[None] for key, value in item.items()}
        with torch.no_grad():
            explanation = model.explain(batch["image"])
        for state in states.values():
            state.update(batch, explanation)
    return states


# -- protocol scores on handcrafted outcomes ----------------------------------------------------------------

def protocol_state(state: type, minimal_sets: list[frozenset[str]] | None = None):
    """A protocol state whose ``score`` is fed by hand (its shared pass is never run)."""
    dataset = SimpleNamespace(minimal_sufficient_part_sets=lambda label: minimal_sets or [])
    return state(Constant(), EvalContext(dataset=dataset, device=torch.device("cpu")))


def outcome_for_d(logits: list[float], removed: list[float], important: list[int]) -> ImageOutcome:
    """An image of class 0 with one background object: ``removed`` are class 0's logits without each of the
    11 parts, then the object; ``important`` are the slots the explanation calls important at every t."""
    k = len(PART_NAMES)
    scores = torch.tensor(logits)
    without = scores.repeat(k + 1, 1)
    without[:, 0] = torch.tensor(removed)
    called = torch.zeros(len(THRESHOLDS), k + 1, dtype=torch.bool)
    called[:, important] = True
    repeated = scores.repeat(len(THRESHOLDS), 1)
    return ImageOutcome(index=0, label=0, logits=scores, objects=1, part_removed=without[:k],
                        object_removed=without[k:], important=called, preserved=repeated, deleted=repeated)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # fed by hand, not by update
def test_distractibility_counts_the_irrelevant_parts_called_important():
    state = protocol_state(Completeness)
    # target logit 2: removing part 0 (to 1.0) or the object (to 0.5) lowers it by 5% or more: relevant;
    # part 1 (1.95: a 2.5% drop), part 2 (3.0: a rise) and parts 3..10 (unchanged) are irrelevant: 10 slots.
    # The explanation calls parts 0 and 1 important: 1 of the 10 irrelevant slots.
    removed = [1.0, 1.95, 3.0] + [2.0] * 8 + [0.5]
    state.score(outcome_for_d([2.0, 0.0], removed, important=[0, 1]))
    first = state.d[0].clone()  # copy 0 of the sum: the first image's row
    # target logit 0 (the reference's both-zero case): removing parts 3..10 leaves 0, which the reference
    # counts as relevant; part 2 (0.5) raises it, part 1 (-1) lowers it: 1 irrelevant slot, called important
    removed = [0.0, -1.0, 0.5] + [0.0] * 8 + [-0.5]
    state.score(outcome_for_d([0.0, 1.0], removed, important=[0, 2]))
    assert first.tolist() == pytest.approx([0.1] * len(THRESHOLDS))
    assert (state.d[0] - first).tolist() == [1.0] * len(THRESHOLDS)
    assert int(state.d_images[0]) == 2
    result = state.compute()
    assert result.detail["d"] == pytest.approx(1 - (0.1 + 1.0) / 2)
    assert result.detail["d_images"] == 2


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # fed by hand, not by update
def test_target_sensitivity_compares_each_class_explanation_with_the_other():
    state = protocol_state(Contrastivity)
    parts = list(PART_NAMES)
    shared = [frozenset(parts[:2]), frozenset(parts[2:4])]  # class 1 shares parts 0, 1; class 2 parts 2, 3

    def contrast(first: list[float], second: list[float]) -> ImageOutcome:
        """Part importances for class 1 (``first``) and class 2 (``second``) on parts 0..3, 0 elsewhere."""
        pad = [0.0] * (len(parts) - 4)
        return ImageOutcome(index=0, label=0, logits=torch.zeros(3), contrast={
            "classes": (1, 2), "shared": shared,
            "importance": [torch.tensor(first + pad), torch.tensor(second + pad)]})

    # image 1: class 1's explanation weighs parts 0, 1 at 6 (class 2's: 2), class 2's weighs parts 2, 3 at 9
    # (class 1's: 1): both explanations point at their own shared parts, scores 1 and 1
    state.score(contrast([3.0, 3.0, 0.5, 0.5], [1.0, 1.0, 4.0, 5.0]))
    assert (float(state.scores[0]), float(state.pairs[0])) == (2.0, 2.0)  # copy 0: scores 1 and 1
    # image 2: class 1's explanation weighs parts 0, 1 less than class 2's does (2 < 4): 0; class 2's: 1
    state.score(contrast([1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 3.0, 3.0]))
    assert (float(state.scores[0]), float(state.pairs[0])) == (3.0, 4.0)  # scores 1, 1, 0, 1
    assert state.compute().value == pytest.approx(0.75)


def test_target_sensitivity_keeps_images_whose_logits_confirm_the_class_pair():
    # FunnyBirds' filter: removing the parts class 1 shares with the target must lower class 1's logit more
    # than removing those class 2 shares, and the other way round for class 2
    def check(removed: list[list[float]]) -> bool:
        outcome = ImageOutcome(index=0, label=0, logits=torch.tensor([5.0, 2.0, 2.0]))
        outcome.contrast = {"classes": (1, 2), "logits": torch.tensor(removed)}
        return _contrast_assumption(outcome)

    assert check([[5.0, 0.5, 1.8], [5.0, 1.9, 0.4]])  # class 1 falls by 1.5 vs 0.1; class 2 by 1.6 vs 0.2
    assert not check([[5.0, 1.9, 1.8], [5.0, 0.5, 0.4]])  # class 1 falls more without class 2's parts
    assert not check([[5.0, 0.5, 0.4], [5.0, 1.9, 1.8]])  # class 2 falls more without class 1's parts


class Boxes(PrototypeModel):
    """Prototypes with fixed classes, regions (the ``regions`` hook) and contributions to class 0."""

    def __init__(self, classes: list[int], boxes: list[list[int]], contributions: list[float]):
        super().__init__()
        self.num_classes, self.input_size, self.config = 2, (20, 20), {}
        self.register_buffer("prototype_classes", torch.tensor(classes))
        self.boxes = torch.tensor(boxes)
        self.weights = torch.stack([torch.tensor(contributions), torch.zeros(len(classes))], dim=1)

    def explain(self, x: Tensor) -> Explanation:
        b = len(x)
        contributions = self.weights.expand(b, -1, -1)
        return Explanation(contributions.sum(1), torch.ones(b, len(self.boxes), 2, 2), contributions)

    def regions(self, explanation: Explanation, image_size: tuple[int, int]) -> Tensor:
        return self.boxes.expand(len(explanation.logits), -1, -1)


def importances(model: PrototypeModel, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Class-0 part importance ``[S]`` and important parts ``[T, S]`` of one image."""
    shared = FunnyBirdsPass(model, None, torch.device("cpu"))
    with torch.no_grad():
        explanation = model.explain(images)
    importance, important = shared._importances(images, explanation, masks, [0], [0])
    return importance[0], important[0]


def test_prototype_part_importance_follows_the_regions_with_positive_contribution():
    # parts (20 x 20 image): A = rows 0..9 x columns 0..9, B = rows 10..19 x columns 10..19, C = rows 10..19 x
    # columns 0..9. Prototype 0 (class 0, contribution 1) covers rows 0..1 of A: 20 of its 100 pixels.
    # Prototype 1 (class-free, contribution 0: a ProtoTree node off the path) covers B; prototype 2
    # (class-free, contribution -0.5: a node leading away from class 0) covers C.
    masks = torch.zeros(1, 3, 20, 20, dtype=torch.bool)
    masks[0, 0, :10, :10] = masks[0, 1, 10:, 10:] = masks[0, 2, 10:, :10] = True
    model = Boxes([0, -1, -1], [[0, 0, 9, 1], [10, 10, 19, 19], [0, 10, 9, 19]], [1.0, 0.0, -0.5])
    importance, important = importances(model, torch.zeros(1, 3, 20, 20), masks)
    assert importance.tolist() == pytest.approx([20.0, 0.0, -50.0])  # contributions x covered pixels
    # A is important while its covered fraction, 0.2, exceeds t; B and C are in no counted region
    assert important[:, 0].tolist() == (THRESHOLDS < 0.2).tolist()
    assert not important[:, 1:].any()


class ChannelSum(PrototypeModel):
    """A black box: logit 0 is the sum of channel 0, logit 1 is 0; Integrated Gradients is channel 0."""

    def __init__(self):
        super().__init__()
        self.num_classes, self.input_size, self.config = 2, (20, 20), {}
        self.register_buffer("prototype_classes", torch.zeros(0, dtype=torch.long))

    def explain(self, x: Tensor) -> Explanation:
        first = x[:, 0].sum((1, 2))
        return Explanation(torch.stack([first, 0 * first], 1), x.new_zeros(len(x), 0, 1, 1))


def test_attribution_part_importance_is_the_dilated_sum_against_the_total():
    # channel 0 is 1 on rows 5..14 x columns 5..14 (100 pixels), so the attribution is 1 there, 0 elsewhere.
    # Part A is that square; part B is rows 16..19, dilated by the 5 x 5 filter to rows 14..19: it holds one
    # attribution row, 10 of 100.
    images = torch.zeros(1, 3, 20, 20)
    images[0, 0, 5:15, 5:15] = 1.0
    masks = torch.zeros(1, 2, 20, 20, dtype=torch.bool)
    masks[0, 0, 5:15, 5:15] = masks[0, 1, 16:] = True
    importance, important = importances(ChannelSum(), images, masks)
    assert importance.tolist() == pytest.approx([100.0, 10.0], abs=1e-3)
    assert important[:, 0].all()
    assert important[:, 1].tolist() == (THRESHOLDS < 0.1).tolist()
