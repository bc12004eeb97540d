"""PAC, PRC and PLC (Sacha et al., AAAI 2024) on handcrafted models whose similarity maps are known functions of
the pixels inside and outside the top prototype's region."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.metrics.resampled import percentile_interval, poisson_counts
from protobench.metrics.spatial_alignment import (
    SPATIAL_ALIGNMENT_METRICS,
    attack_outside,
    epsilon,
    margin,
    outside_mask,
    spatial_misalignment,
)
from protobench.runner import harness

SIZE = 16
S = (slice(0, 4), slice(0, 3))  # the top prototype's area before the attack: rows 0-3, columns 0-2
S_EXTRA = (slice(0, 4), slice(3, 4))  # column 3, rows 0-3: lights up as the outside pixels darken
REGION = (0, 0, 3, 3)  # the hook's box (x0, y0, x1, y1), inclusive; with the margin, rows and columns 0-4
BLOCK = (slice(10, 16), slice(10, 16))  # pixels outside the region that the "looking outside" model reads
#: Constant maps of the other prototypes: 0.9 and 0.5 (class 1), 0.95 (class 0, the image's).
OTHERS = (0.9, 0.5, 0.95)
#: Mean pixel-space budget over the channels: every pixel of BLOCK (1.0 on the test images) ends at 1 - eps_c.
EPS_MEAN = float(epsilon().mean())


def looking(block: tuple[slice, slice]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Maps ``[B, 4, 16, 16]``: prototype 0 is ``2m - 1`` on S and ``5 * relu(1 - m)`` on S_EXTRA, with m the
    mean of ``block``'s pixels; the others are the constants OTHERS."""

    def maps(x: torch.Tensor) -> torch.Tensor:
        m = x[:, :, block[0], block[1]].mean(dim=(1, 2, 3))[:, None, None]
        top = torch.zeros(len(x), SIZE, SIZE)
        top[:, S[0], S[1]] = 1
        extra = torch.zeros(SIZE, SIZE)
        extra[S_EXTRA] = 1
        first = top * (2 * m - 1) + extra * 5 * torch.relu(1 - m)
        rest = [torch.full((len(x), SIZE, SIZE), v) for v in OTHERS]
        return torch.stack([first, *rest], dim=1)

    return maps


class MapModel(PrototypeModel):
    """Similarity maps ``maps(x)`` on a 16 x 16 grid (the image's size); ``box`` (if given): the regions hook."""

    def __init__(self, maps: Callable, classes: tuple | torch.Tensor = (0, 1, 1, 0), box: tuple[int, ...] | None = None,
                 contributions: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("prototype_classes", torch.as_tensor(classes))
        self.num_classes, self.input_size, self.config = 2, (SIZE, SIZE), {}
        self.maps, self.box, self.contributions, self.calls = maps, box, contributions, 0
        if box is not None:
            self.regions = self._regions

    def explain(self, x: torch.Tensor) -> Explanation:
        self.calls += 1
        contributions = None if self.contributions is None else self.contributions.expand(len(x), -1, -1)
        return Explanation(logits=torch.zeros(len(x), 2), similarities=self.maps(x), contributions=contributions)

    def _regions(self, explanation: Explanation, image_size: tuple[int, int]) -> torch.Tensor:
        b, p = explanation.similarities.shape[:2]
        return torch.tensor(self.box).expand(b, p, 4)


def batch(images: torch.Tensor, index: torch.Tensor | None = None) -> dict:
    index = torch.arange(len(images)) if index is None else index
    return {"image": images, "label": torch.zeros(len(images), dtype=torch.long), "index": index}


def run(model: PrototypeModel, batches: list[dict], seed: int = 0) -> dict[str, float | None]:
    context = EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu"), seed=seed)
    states = {s.name: s.compute(model, context) for s in SPATIAL_ALIGNMENT_METRICS}
    for b in batches:
        with torch.no_grad():
            out = model.explain(b["image"])
        for state in states.values():
            state.update(b, out)
    return {name: state.compute().value for name, state in states.items()}


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    """Random images with every pixel of BLOCK at 1."""
    x = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    x[:, :, BLOCK[0], BLOCK[1]] = 1
    return x


def bootstrap_interval(index: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, seed: int):
    """The expected interval of a ratio of per-image sums: each resample weights image ``index[i]`` by its Poisson
    count (:func:`protobench.metrics.resampled.poisson_counts`); resamples with a zero denominator are undefined."""
    counts = poisson_counts(index, seed)[1:]
    return percentile_interval((counts @ numerator.double() / (counts @ denominator.double())).tolist())


def test_hand_computed_values():
    # BLOCK ends at 1 - eps_c, so m = 1 - EPS_MEAN: prototype 0 drops from 1 to 1 - 2 * EPS_MEAN (PAC
    # 200 * EPS_MEAN); the class-1 prototype at 0.9 overtakes it, the one at 0.5 does not, the class-0 one
    # at 0.95 does but is the image's class (PRC 1); its top area grows from S (12 pixels) to S + S_EXTRA
    # (16 pixels; the 0.9 quantile of maps with 240 zeros is 0), IoU 12 / 16 (PLC 25).
    values = run(MapModel(looking(BLOCK), box=REGION), [batch(images())])
    assert 1 - 2 * EPS_MEAN < 0.9
    assert values["spatial_pac"] == pytest.approx(200 * EPS_MEAN, abs=1e-4)
    assert values["spatial_prc"] == 1
    assert values["spatial_plc"] == pytest.approx(25, abs=1e-4)


def test_model_looking_inside_scores_zero():
    inside = (slice(0, 4), slice(0, 4))
    values = run(MapModel(looking(inside), box=REGION), [batch(images())])
    assert values == {"spatial_pac": 0, "spatial_prc": 0, "spatial_plc": 0}


def test_perturbation_stays_outside_and_within_epsilon():
    model = MapModel(looking(BLOCK), box=REGION)
    x = images(3)
    boxes = torch.tensor(REGION).expand(3, 4)
    outside = outside_mask(boxes, (SIZE, SIZE))
    adv = attack_outside(model, x, torch.zeros(3, dtype=torch.long), outside, torch.arange(3), seed=0)
    assert epsilon().flatten().tolist() == pytest.approx([0.4 * 0.229, 0.4 * 0.224, 0.4 * 0.225])  # about 23/255
    assert margin((SIZE, SIZE)) == (1, 1)
    expected = torch.ones(SIZE, SIZE)
    expected[:5, :5] = 0  # REGION widened by the margin
    assert torch.equal(outside[:, 0], expected.expand(3, -1, -1))
    assert torch.equal(adv[:, :, :5, :5], x[:, :, :5, :5])
    assert ((adv - x).abs() <= epsilon() + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
    assert (adv != x)[:, :, 5:, 5:].float().mean() > 0.9  # the random start moved the pixels outside
    assert torch.allclose(adv[:, :, BLOCK[0], BLOCK[1]], (1 - epsilon()).expand(3, 3, 6, 6), atol=1e-5)


def test_regions_hook_is_used():
    # The default region is the box around the map's peak at (0, 0), as REGION; a hook whose box covers BLOCK
    # protects the pixels the prototype reads, so nothing changes.
    x = images()
    default = run(MapModel(looking(BLOCK)), [batch(x)])
    assert default["spatial_pac"] == pytest.approx(200 * EPS_MEAN, abs=1e-4)
    hooked = run(MapModel(looking(BLOCK), box=(10, 10, 15, 15)), [batch(x)])
    assert hooked == {"spatial_pac": 0, "spatial_prc": 0, "spatial_plc": 0}


def test_class_agnostic_prototypes_count_by_contribution():
    # All prototypes class-agnostic; prototype 1 (0.9) argues for the image's class 0, prototype 3 (0.95) does
    # not: only prototype 3 counts as another class's, and both overtake the top prototype.
    contributions = torch.zeros(1, 4, 2)
    contributions[0, 1, 0] = 0.5
    model = MapModel(looking(BLOCK), classes=(-1, -1, -1, -1), box=REGION, contributions=contributions)
    assert run(model, [batch(images())])["spatial_prc"] == 1


def test_batch_invariance():
    x = images(3, seed=1)
    x[1, :, BLOCK[0], BLOCK[1]] = 0.97
    x[2, :, BLOCK[0], BLOCK[1]] = 0.99
    whole = run(MapModel(looking(BLOCK), box=REGION), [batch(x)])
    parts = run(MapModel(looking(BLOCK), box=REGION),
                [batch(x[:2], torch.arange(2)), batch(x[2:], torch.arange(2, 3))])
    assert whole == pytest.approx(parts, abs=1e-5)


def test_three_columns_share_one_attack():
    model = MapModel(looking(BLOCK), box=REGION)
    run(model, [batch(images())])
    assert model.calls == 1 + 40 + 1  # the shared pass, the attack's 40 steps and the pass after them


def test_not_applicable_without_prototypes():
    model = MapModel(lambda x: torch.zeros(len(x), 0, SIZE, SIZE), classes=torch.zeros(0, dtype=torch.long))
    out = model.explain(images())
    for spec in SPATIAL_ALIGNMENT_METRICS:
        assert spec.costly and spec.group == "robustness" and not spec.higher_is_better
        assert harness._missing_capability(spec, model, None, out) == "the model has no prototypes"


def test_bootstrap_interval_does_not_depend_on_batching():
    # Six images whose BLOCK starts at different levels (each ends eps_c lower), so that PAC, PRC and PLC
    # differ from image to image.
    x = images(6, seed=2)
    for i, level in enumerate((1.0, 0.97, 0.99, 0.6, 0.98, 0.75)):
        x[i, :, BLOCK[0], BLOCK[1]] = level
    order = torch.tensor([4, 0, 5, 2, 1, 3])
    outcomes = []
    for batches in ([batch(x)], [batch(x[order[:2]], order[:2]), batch(x[order[2:]], order[2:])]):
        context = EvalContext(dataset=SimpleNamespace(), device=torch.device("cpu"), seed=1)
        model = MapModel(looking(BLOCK), box=REGION)
        states = {s.name: s.compute(model, context) for s in SPATIAL_ALIGNMENT_METRICS}
        for b in batches:
            with torch.no_grad():
                out = model.explain(b["image"])
            for state in states.values():
                assert state.seed == 1
                state.update(b, out)
        outcomes.append({name: state.compute() for name, state in states.items()})
    whole, split = outcomes
    model = MapModel(looking(BLOCK), box=REGION)
    with torch.no_grad():
        out = model.explain(x)
    per_image = spatial_misalignment(model, batch(x), out, seed=1)
    counted, ones = per_image["counted"].double(), torch.ones(6)
    expected = {"spatial_pac": bootstrap_interval(torch.arange(6), per_image["pac"] * counted, counted, seed=1),
                "spatial_prc": bootstrap_interval(torch.arange(6), per_image["prc"], ones, seed=1),
                "spatial_plc": bootstrap_interval(torch.arange(6), per_image["plc"], ones, seed=1)}
    for name in whole:
        low, high = whole[name].interval
        assert low <= whole[name].value <= high and low < high, name
        assert whole[name].interval == pytest.approx(expected[name], abs=1e-9), name
        assert split[name].value == pytest.approx(whole[name].value, abs=1e-5)
        assert split[name].interval == pytest.approx(whole[name].interval, abs=1e-5)
