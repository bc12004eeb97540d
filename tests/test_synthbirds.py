"""synthbirds: determinism, keypoints, visibility, part and object removal, class table, options,
the CUB layout, and that global colour does not solve the default configuration."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from PIL import Image

from protobench.data.synthbirds import (
    PAPER_OPTIONS,
    PART_NAMES,
    QUICK_OPTIONS,
    SynthBirdsConfig,
    build_synthbirds,
    class_table,
    render_image,
    write_cub_layout,
)
from protobench.data.synthbirds_classes import COLOUR_PARTS, MAIN_COLOURS, MAX_CLASSES, differing_parts
from protobench.data.synthbirds_render import render, sample_scene
from protobench.data.transforms import Resize

SMALL = {"num_classes": 6, "images_per_class": 6, "test_fraction": 0.5, "resolution": 48}


def _images(ds) -> torch.Tensor:
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def test_same_seed_same_images_in_any_process_and_another_seed_differs():
    ds = build_synthbirds(None, "train", **SMALL, workers=1)
    first = _images(ds)
    del ds  # drop the in-process copy so that the next build draws again, here in two processes
    again = _images(build_synthbirds(None, "train", **SMALL, workers=2))
    other_seed = _images(build_synthbirds(None, "train", **SMALL, seed=1))
    test_split = _images(build_synthbirds(None, "test", **SMALL))
    assert torch.equal(first, again)
    assert (first != other_seed).flatten(1).any(1).all()
    assert (first != test_split).flatten(1).any(1).all()


def test_items_match_a_single_image_rendered_on_its_own():
    ds = build_synthbirds(None, "test", **SMALL)
    config = SynthBirdsConfig(**SMALL)
    for i in (0, 7, len(ds) - 1):
        item, alone = ds[i], render_image(config, "test", i)
        assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert np.array_equal((item["image"] * 255).round().byte().permute(1, 2, 0).numpy(), alone.image)
        assert item["label"] == alone.label == i % 6 and item["index"] == i
        assert torch.equal(item["keypoints"], torch.from_numpy(alone.keypoints))
        assert item["keypoints"].shape == (len(PART_NAMES), 3) and item["bbox"].shape == (4,)
    assert ds.num_classes == 6 and ds.part_names == PART_NAMES and len(ds.class_names) == 6
    assert len(ds) == 18 and len(build_synthbirds(None, "train", **SMALL)) == 18


def test_keypoints_lie_on_their_parts_and_visible_ones_show_that_part():
    config = SynthBirdsConfig(**{**SMALL, "resolution": 64})
    seen = 0
    for i in range(12):
        r = render_image(config, "train", i)
        kp = r.keypoints
        assert r.part_map.shape == (64, 64) and r.part_map.max() <= len(PART_NAMES)
        cols, rows = np.round(kp[:, 0]).astype(int), np.round(kp[:, 1]).astype(int)
        inside = (cols >= 0) & (cols < 64) & (rows >= 0) & (rows < 64)
        for k, part in enumerate(PART_NAMES):
            if kp[k, 2]:
                assert r.part_map[rows[k], cols[k]] == k + 1
            # the part drawn alone covers its keypoint: the keypoint lies on the part's shape
            others = set(PART_NAMES) - {part}
            alone = render_image(config, "train", i, removed_parts=others, removed_objects=range(9))
            assert alone.keypoints[k, 2] == inside[k]
            seen += int(kp[k, 2])
        # the box is the tight box of the bird's pixels
        ys, xs = np.nonzero(r.part_map)
        assert r.bbox.tolist() == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert seen > 0.8 * 12 * len(PART_NAMES)  # parts are laid out so that most keypoints show


def test_keypoints_out_of_the_image_or_occluded_are_invisible():
    big = SynthBirdsConfig(**{**SMALL, "scale_range": (2.5, 2.5)})
    outside = 0
    for i in range(6):
        kp = render_image(big, "train", i).keypoints
        pixel = np.round(kp[:, :2])
        out = ((pixel < 0) | (pixel > 47)).any(1)
        assert not kp[out, 2].any()
        outside += int(out.sum())
    assert outside > 0

    twig = SynthBirdsConfig(**{**SMALL, "occluder_probability": 1.0})
    occluded = 0
    for i in range(18):
        r = render_image(twig, "train", i)
        j = r.objects.index("twig")
        cols, rows = np.round(r.keypoints[:, :2]).astype(int).T
        inside = (cols >= 0) & (cols < 48) & (rows >= 0) & (rows < 48)
        under = np.zeros(len(PART_NAMES), dtype=bool)
        under[inside] = r.object_map[rows[inside], cols[inside]] == j + 1
        assert not r.keypoints[under, 2].any()
        unblocked = render_image(twig, "train", i, removed_objects={j})
        assert unblocked.keypoints[under, 2].all()
        occluded += int(under.sum())
    assert occluded > 0


@pytest.mark.parametrize("part", PART_NAMES)
def test_a_removed_part_vanishes_and_only_its_pixels_change(part):
    config = SynthBirdsConfig(**SMALL)
    k = PART_NAMES.index(part) + 1
    revealed = 0
    for i in range(4):
        full = render_image(config, "train", i)
        cut = render_image(config, "train", i, removed_parts=[part])
        was = full.part_map == k
        assert was.any() and not (cut.part_map == k).any()
        assert np.array_equal(cut.part_map[~was], full.part_map[~was])
        changed = (cut.image != full.image).any(-1)
        assert not changed[~was].any() and changed.any()
        assert cut.keypoints[k - 1, 2] == 0
        revealed += int((cut.part_map[was] > 0).sum())
    if part == "wing":
        assert revealed > 0  # the body behind the wing shows


def test_render_without_gives_items_and_removes_background_objects():
    ds = build_synthbirds(None, "train", transform=Resize(24), **SMALL)
    item, cut = ds[3], ds.render_without(3, ["crown"])
    assert cut["image"].shape == item["image"].shape == (3, 24, 24)
    assert cut["label"] == item["label"] and not torch.equal(cut["image"], item["image"])
    assert cut["keypoints"][PART_NAMES.index("crown"), 2] == 0

    full = ds.render(3)
    j = int(full.object_map.max()) - 1
    without = ds.render(3, removed_objects=[j])
    assert not (without.object_map == j + 1).any()
    changed = (without.image != full.image).any(-1)
    assert changed.any() and not changed[full.object_map != j + 1].any()
    assert np.array_equal(without.part_map, full.part_map)


def test_classes_are_part_attribute_tables_with_one_part_differences():
    table = class_table(SynthBirdsConfig())
    assert len(table) == SynthBirdsConfig().num_classes
    attributes = [tuple(sorted(c.parts.items())) for c in table]
    assert len(set(attributes)) == len(table) and len({c.name for c in table}) == len(table)
    for c in table:
        assert set(c.parts) == set(PART_NAMES)
        # every class shows the same colours, on different parts
        assert sorted(c.parts[p].colour for p in COLOUR_PARTS) == sorted(MAIN_COLOURS)
    distances = [len(differing_parts(a, b)) for a, b in itertools.combinations(table, 2)]
    assert min(distances) == 1 and max(distances) >= 3

    big = class_table(SynthBirdsConfig(num_classes=200))
    assert len({tuple(sorted(c.parts.items())) for c in big}) == 200
    shapes = {(p, c.parts[p].shape) for c in big for p in ("beak", "tail")}
    assert {("beak", "long"), ("tail", "forked")} <= shapes
    assert [c.name for c in big[:24]] == [c.name for c in table]


def test_classes_one_part_apart_differ_in_that_part_only():
    scene = sample_scene(np.random.default_rng(3), SynthBirdsConfig().nuisance)
    table = class_table(SynthBirdsConfig(num_classes=MAX_CLASSES))
    base = render(scene, table[0], 96)
    variants = [c for c in table if len(differing_parts(table[0], c)) == 1]
    assert {differing_parts(table[0], c)[0] for c in variants} == {"wing", "beak", "tail", "crown"}
    for variant in variants:
        (part,) = differing_parts(table[0], variant)
        other = render(scene, variant, 96)
        k = PART_NAMES.index(part) + 1
        changed = (other.image != base.image).any(-1)
        assert changed.any()
        assert ((base.part_map == k) | (other.part_map == k))[changed].all(), variant.name


@pytest.mark.parametrize(
    ("split", "options", "named"),
    [
        ("validation", {}, "validation"),
        ("train", {"colours": 3}, "colours"),
        ("train", {"num_classes": 0}, "num_classes"),
        ("train", {"num_classes": 1000}, "num_classes"),
        ("train", {"images_per_class": 1}, "images_per_class"),
        ("train", {"test_fraction": 1.5}, "test_fraction"),
        ("train", {"resolution": 4}, "resolution"),
        ("train", {"scale_range": (1.2, 0.8)}, "scale_range"),
    ],
)
def test_bad_options_raise_value_errors_naming_them(split, options, named):
    with pytest.raises(ValueError, match=named):
        build_synthbirds(None, split, **options)


def test_render_rejects_unknown_parts():
    ds = build_synthbirds(None, "test", **SMALL)
    with pytest.raises(ValueError, match="tentacle"):
        ds.render(0, removed_parts=["tentacle"])


def test_presets_are_valid_configs():
    quick, paper = SynthBirdsConfig(**QUICK_OPTIONS), SynthBirdsConfig(**PAPER_OPTIONS)
    assert quick.resolution == 64 and 2000 <= quick.split_size("train") <= 3000
    assert paper.num_classes == 200 and paper.resolution == 224
    assert paper.per_class("train") == paper.per_class("test") == 30


def test_cub_layout_files_and_lossless_images(tmp_path):
    options = {"num_classes": 3, "images_per_class": 4, "test_fraction": 0.5, "resolution": 32}
    root = write_cub_layout(tmp_path / "cub", **options)
    assert root == tmp_path / "cub"
    lines = {name: (root / name).read_text().splitlines() for name in (
        "images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt",
        "parts/parts.txt", "parts/part_locs.txt")}
    n = 12
    assert [len(lines[f]) for f in ("images.txt", "image_class_labels.txt", "train_test_split.txt",
                                    "bounding_boxes.txt")] == [n] * 4
    assert len(lines["classes.txt"]) == 3 and len(lines["parts/parts.txt"]) == len(PART_NAMES)
    assert len(lines["parts/part_locs.txt"]) == n * len(PART_NAMES)
    assert lines["parts/parts.txt"][0] == f"1 {PART_NAMES[0]}"
    assert all(re.fullmatch(r"\d+ \d{3}\.\w+", line) for line in lines["classes.txt"])
    assert all(re.fullmatch(r"\d+ \d{3}\.\w+/\w+\.png", line) for line in lines["images.txt"])
    assert all(re.fullmatch(r"\d+ [01]", line) for line in lines["train_test_split.txt"])
    assert all(re.fullmatch(r"\d+( \d+\.\d+){4}", line) for line in lines["bounding_boxes.txt"])
    assert all(re.fullmatch(r"\d+ \d+ \d+\.\d+ \d+\.\d+ [01]", line) for line in lines["parts/part_locs.txt"])

    ids = [int(line.split()[0]) for line in lines["images.txt"]]
    assert ids == list(range(1, n + 1))
    train = build_synthbirds(None, "train", **options)
    test = build_synthbirds(None, "test", **options)
    locs = np.array([line.split() for line in lines["parts/part_locs.txt"]], dtype=float).reshape(n, -1, 5)
    for image_id, line in enumerate(lines["images.txt"], start=1):
        ds, i = (train, image_id - 1) if image_id <= len(train) else (test, image_id - 1 - len(train))
        item = ds[i]
        assert lines["train_test_split.txt"][image_id - 1] == f"{image_id} {int(ds is train)}"
        assert lines["image_class_labels.txt"][image_id - 1] == f"{image_id} {item['label'] + 1}"
        png = np.asarray(Image.open(root / "images" / line.split()[1]))
        assert np.array_equal(png, (item["image"] * 255).round().byte().permute(1, 2, 0).numpy())
        box = [float(v) for v in lines["bounding_boxes.txt"][image_id - 1].split()[1:]]
        assert box == item["bbox"].tolist()
        visible = item["keypoints"][:, 2] == 1
        assert np.array_equal(locs[image_id - 1, :, 4], visible.numpy())
        written = locs[image_id - 1, visible.numpy(), 2:4]
        assert np.allclose(written, item["keypoints"][visible, :2].numpy(), atol=0.006)
        assert (locs[image_id - 1, ~visible.numpy(), 2:4] == 0).all()


def _colour_histograms(ds) -> torch.Tensor:
    """Normalised global 8x8x8 RGB histograms ``[N, 512]``."""
    q = (_images(ds) * 255).round().long().clamp(0, 255) // 32
    bins = (q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]).flatten(1)
    offsets = torch.arange(len(bins))[:, None] * 512
    counts = torch.bincount((bins + offsets).flatten(), minlength=512 * len(bins)).view(len(bins), 512)
    return counts.float() / bins.shape[1]


def _linear_accuracy(x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor) -> float:
    """Test accuracy of multinomial logistic regression fitted on standardised ``x``."""
    mean, std = x.mean(0), x.std(0) + 1e-3
    torch.manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    optimiser = torch.optim.Adam(linear.parameters(), lr=1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(linear((x - mean) / std), y).backward()
        optimiser.step()
    with torch.no_grad():
        return (linear((xt - mean) / std).argmax(1) == yt).float().mean().item()


@pytest.fixture
def one_thread():
    """Small torch ops run far faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_global_colour_histograms_do_not_solve_the_default_configuration(one_thread):
    train, test = build_synthbirds(None, "train"), build_synthbirds(None, "test")
    x, xt = _colour_histograms(train), _colour_histograms(test)
    accuracy = _linear_accuracy(x, train.labels, xt, test.labels)
    assert accuracy <= 0.5, accuracy
    # the same classifier does read what histograms carry: plain and barred wings (classes 2c, 2c+1)
    assert _linear_accuracy(x, train.labels % 2, xt, test.labels % 2) > 0.8
