"""The calibration rows: the part-supervised ProtoPNet and the random-explanation model."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from protobench_baseline.model import Baseline
from protobench_references.part_supervised import alignment_targets, keypoint_cells, part_alignment
from protobench_references.random_explanations import RandomExplanations, image_seeds

from protobench.api.plugins import registry
from protobench.report import leaderboard
from protobench.report.gallery import contact_sheet
from protobench.runner import harness
from protobench.runner.store import RecordKey, ResultStore


def quiet(iterable, **_):
    return iterable


def random_model(num_classes: int = 3) -> RandomExplanations:
    config = registry().model("random_explanations").config("quick", num_classes=num_classes, input_size=32,
                                                                 backbone="resnet10t", output_stride=None, weights=None)
    torch.manual_seed(0)
    return RandomExplanations(config).eval()


def test_references_are_marked() -> None:
    models = registry().models
    assert models["part_supervised"].reference and models["random_explanations"].reference
    assert not models["protopnet"].reference and not models["baseline"].reference


def test_random_maps_follow_the_image_not_the_batch() -> None:
    model = random_model()
    x = torch.rand(4, 3, 32, 32)
    alone = model.explain(x[2:3])
    together = model.explain(x)
    torch.testing.assert_close(alone.similarities[0], together.similarities[2])
    torch.testing.assert_close(alone.contributions[0], together.contributions[2])
    assert not torch.equal(together.similarities[0], together.similarities[1])
    assert together.similarities.shape[:2] == (4, 30) and together.contributions.shape == (4, 30, 3)
    assert (together.similarities >= 0).all() and (together.similarities < 1).all()


def test_random_logits_are_the_baselines() -> None:
    model = random_model()
    baseline = Baseline(model.config).eval()
    baseline.load_state_dict({k: v for k, v in model.state_dict().items() if k != "prototype_classes"}, strict=False)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), baseline(x))


def test_image_seeds_see_one_grey_level() -> None:
    x = torch.rand(1, 3, 8, 8)
    y = x.clone()
    y[0, 1, 3, 4] = (torch.round(y[0, 1, 3, 4] * 255) + 1) / 255 if y[0, 1, 3, 4] < 0.99 else 0.0
    assert image_seeds(x) == image_seeds(x.clone()) and image_seeds(x) != image_seeds(y)


def test_keypoint_cells_by_hand() -> None:
    # 64 px image, 8x8 grid: cells of 8 px; (x, y) = (17, 9) is row 1, column 2; (63, 63) the last cell
    keypoints = torch.tensor([[[17.0, 9.0, 1.0], [63.0, 63.0, 1.0], [0.0, 0.0, 0.0]]])
    assert keypoint_cells(keypoints, (64, 64), (8, 8)).tolist() == [[1 * 8 + 2, 63, 0]]


def test_alignment_targets_move_halfway_to_the_visible_centre() -> None:
    # visible keypoints (1, 1), (15, 1), (8, 13): centre (8, 5); the hidden (40, 40) does not count in the centre
    keypoints = torch.tensor([[[1.0, 1.0, 1.0], [15.0, 1.0, 1.0], [8.0, 13.0, 1.0], [40.0, 40.0, 0.0]]])
    moved = alignment_targets(keypoints, 0.5)
    assert moved.tolist() == [[[4.5, 3.0, 1.0], [11.5, 3.0, 1.0], [8.0, 9.0, 1.0], [24.0, 22.5, 0.0]]]
    assert torch.equal(alignment_targets(keypoints, 0.0), keypoints)
    # on a 4x4 grid over 16 px the first two move from the corner columns 0 and 3 into columns 1 and 2
    assert keypoint_cells(moved, (16, 16), (4, 4))[0, :2].tolist() == [4 * 0 + 1, 4 * 0 + 2]
    assert keypoint_cells(keypoints, (16, 16), (4, 4))[0, :2].tolist() == [0, 3]


def test_part_alignment_by_hand() -> None:
    """Uniform distances: log(h*w); a distance map lowest at the keypoint's cell: lower; other class: ignored."""
    classes = torch.tensor([0, 0, 1])  # 2 prototypes per class (the third is class 1's first)
    keypoints = torch.tensor([[[4.0, 4.0, 1.0], [12.0, 4.0, 1.0]]])  # part 0 in cell 0, part 1 in cell 1 (2x2 grid)
    labels = torch.tensor([0])
    flat = torch.zeros(1, 3, 2, 2)
    assert math.isclose(float(part_alignment(flat, labels, keypoints, classes, 2, (16, 16), 1.0)), math.log(4),
                        rel_tol=1e-6)
    aligned = torch.ones(1, 3, 2, 2)
    aligned[0, 0, 0, 0] = 0.0  # prototype 0 (part 0) nearest in cell 0
    aligned[0, 1, 0, 1] = 0.0  # prototype 1 (part 1) nearest in cell 1
    expected = -math.log(math.exp(0) / (math.exp(0) + 3 * math.exp(-1)))
    assert math.isclose(float(part_alignment(aligned, labels, keypoints, classes, 2, (16, 16), 1.0)), expected,
                        rel_tol=1e-6)
    swapped = aligned[:, [1, 0, 2]]
    assert float(part_alignment(swapped, labels, keypoints, classes, 2, (16, 16), 1.0)) > expected
    hidden = keypoints.clone()
    hidden[..., 2] = 0
    assert float(part_alignment(aligned, labels, hidden, classes, 2, (16, 16), 1.0)) == 0.0


SMALL = {"num_classes": 4, "images_per_class": 120}
#: from a random quick backbone (no stand-in: it takes minutes), one push after the last epoch
FROM_SCRATCH = {"weights": None, "warm_epochs": 2, "train_epochs": 16, "push_start": 100, "last_layer_epochs": 2,
                "epochs": 4}


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> dict[str, dict[str, float]]:
    """Consistency and object relevance of the references and ProtoPNet, trained alike on 4 synthbirds classes."""
    reg = registry()
    values = {}
    for model in ("part_supervised", "protopnet", "random_explanations"):
        overrides = {k: v for k, v in FROM_SCRATCH.items() if k in reg.model(model).config("quick")}
        settings = harness.Settings(workdir=tmp_path_factory.mktemp(model), dataset_options=SMALL,
                                    model_overrides=overrides)
        harness.train(reg, model, settings, progress=quiet)
        records = harness.evaluate(reg, model, settings, ["accuracy", "consistency", "object_relevance"],
                                   progress=quiet)
        values[model] = {r["metric"]: r["value"] for r in records}
    return values


@pytest.mark.slow  # trains three models (~80 s); .ci/run runs it
def test_part_supervised_row_reaches_the_top(calibration) -> None:
    ours = calibration["part_supervised"]
    assert ours["consistency"] >= 0.9
    assert ours["object_relevance"] > calibration["protopnet"]["object_relevance"]


@pytest.mark.slow  # shares that fixture; .ci/run runs it
def test_random_row_stays_at_the_floor(calibration) -> None:
    assert calibration["random_explanations"]["consistency"] <= 0.05
    assert calibration["random_explanations"]["object_relevance"] < calibration["part_supervised"]["object_relevance"]


def test_leaderboard_marks_references_and_lists_them_last(tmp_path) -> None:
    store = ResultStore(tmp_path)
    for model in ("part_supervised", "protopnet", "baseline"):  # alphabetically, the reference would come 2nd
        store.put(RecordKey("synthbirds", "quick", model, "run0", 0, "accuracy"),
                  {"value": 0.5, "higher_is_better": True, "model_info": {"backbone": "b", "parameters": 1}})
    data = leaderboard.table(store, "synthbirds", registry())
    assert [(r["model"], r["reference"]) for r in data["rows"]] == [
        ("baseline", False), ("protopnet", False), ("part_supervised", True)]
    text = leaderboard.markdown(data, registry())
    models = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")][1:4]
    assert models == ["baseline", "protopnet", "part_supervised (reference)"]
    assert "calibration rows, not ranked" in text


def test_contact_sheet_stacks_pictures(tmp_path) -> None:
    paths = []
    for i, size in enumerate([(30, 10), (20, 15)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", size, (255, 0, 0)).save(paths[-1])
    sheet = Image.open(contact_sheet(paths, tmp_path / "sheet.png"))
    assert sheet.size == (30, 25) and sheet.getpixel((25, 20)) == (255, 255, 255)
    assert sheet.getpixel((5, 20)) == (255, 0, 0)
