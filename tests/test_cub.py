"""The CUB-200-2011 reader: round trip through synthbirds written in the CUB layout, and every error path."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from protobench.data.cub import CUBFormatError, build_cub
from protobench.data.images import ImageReadError
from protobench.data.synthbirds import build_synthbirds, write_cub_layout

OPTIONS = {"num_classes": 3, "images_per_class": 4, "resolution": 32, "seed": 0}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_cub_layout(tmp_path_factory.mktemp("cub") / "CUB_200_2011", **OPTIONS)


@pytest.fixture
def cub(tmp_path, written):
    """A fresh copy of the written layout that a test may break."""
    return shutil.copytree(written, tmp_path / "CUB_200_2011")


def _lines(path):
    return path.read_text().splitlines()


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def _replace_line(path, number, text):
    lines = _lines(path)
    lines[number - 1] = text
    _write(path, lines)


def _same_items(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], key


@pytest.mark.parametrize("split", ["train", "test"])
def test_round_trip_through_the_cub_layout(written, split):
    read = build_cub(written.parent, split)  # the CUB_200_2011 subfolder is found
    original = build_synthbirds(None, split, None, **OPTIONS)
    assert read.split == split and read.root == written
    assert len(read) == len(original) and read.num_classes == original.num_classes
    assert read.part_names == original.part_names
    names = [n.replace(" ", "_") for n in original.class_names]
    assert [n.split(".", 1)[1] for n in read.class_names] == names
    for i in range(len(read)):
        a, b = read[i], original[i]
        assert a["index"] == i and a["label"] == b["label"]
        assert torch.equal(a["image"], b["image"])  # PNG is lossless
        assert torch.allclose(a["bbox"], b["bbox"], atol=0.05)  # written with one decimal
        visible = b["keypoints"][:, 2] > 0
        assert torch.equal(a["keypoints"][:, 2] > 0, visible)
        assert torch.allclose(a["keypoints"][visible], b["keypoints"][visible], atol=0.005)  # two decimals


def test_transform_sees_the_item(written):
    seen = []
    dataset = build_cub(written, "test", transform=lambda item: seen.append(item) or {"wrapped": item})
    assert dataset[1]["wrapped"] is seen[0]
    assert seen[0]["index"] == 1 and seen[0]["image"].shape == (3, 32, 32)


def test_crop_to_bbox_moves_keypoints_by_the_box_origin(written):
    full, cropped = build_cub(written, "train"), build_cub(written, "train", crop_to_bbox=True)
    for i in range(len(full)):
        a, b = full[i], cropped[i]
        x, y, w, h = (round(v) for v in a["bbox"].tolist())
        assert torch.equal(b["image"], a["image"][:, y:y + h, x:x + w])
        moved = a["keypoints"][:, :2] - torch.tensor([x, y], dtype=torch.float32)
        inside = (moved >= 0).all(1) & (moved[:, 0] < w) & (moved[:, 1] < h)
        visible = (a["keypoints"][:, 2] > 0) & inside
        assert visible.any() and torch.equal(b["keypoints"][:, 2] > 0, visible)
        assert torch.allclose(b["keypoints"][visible, :2], moved[visible])
        assert torch.equal(b["bbox"], torch.tensor([0.0, 0.0, w, h]))


def test_line_order_and_blank_lines_do_not_matter(written, cub):
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt",
                 "classes.txt", "parts/parts.txt", "parts/part_locs.txt"):
        _write(cub / name, ["", *reversed(_lines(cub / name)), "   "])
    for split in ("train", "test"):
        a, b = build_cub(written, split), build_cub(cub, split)
        assert (a.class_names, a.part_names) == (b.class_names, b.part_names)
        for i in range(len(a)):
            _same_items(a[i], b[i])


def test_part_columns_follow_part_ids_and_names_keep_spaces(written, cub):
    """Renumbering the parts in reverse reverses the keypoint columns; names may contain spaces."""
    names = [line.split(maxsplit=1) for line in _lines(cub / "parts/parts.txt")]
    k = len(names)
    _write(cub / "parts/parts.txt", [f"{k + 1 - int(i)} the {name}" for i, name in names])
    locs = [line.split() for line in _lines(cub / "parts/part_locs.txt")]
    _write(cub / "parts/part_locs.txt", [" ".join([f[0], str(k + 1 - int(f[1])), *f[2:]]) for f in locs])
    a, b = build_cub(written, "train"), build_cub(cub, "train")
    assert b.part_names == tuple(f"the {name}" for name in reversed(a.part_names))
    assert torch.equal(b[0]["keypoints"], a[0]["keypoints"].flip(0))


def test_a_missing_part_location_is_invisible(written, cub):
    locs = _lines(cub / "parts/part_locs.txt")
    image_id, part_id = (int(v) for v in locs[3].split()[:2])
    _write(cub / "parts/part_locs.txt", locs[:3] + locs[4:])
    a, b = build_cub(written, "train"), build_cub(cub, "train")
    row = a.image_ids.tolist().index(image_id)
    assert a.keypoints[row, part_id - 1, 2] == 1
    assert torch.equal(b.keypoints[row, part_id - 1], torch.zeros(3))
    b.keypoints[row, part_id - 1] = a.keypoints[row, part_id - 1]
    assert torch.equal(a.keypoints, b.keypoints)  # nothing else moved


def test_without_classes_txt_class_names_are_the_image_folders(written, cub):
    (cub / "classes.txt").unlink()
    read = build_cub(cub, "train")
    folders = {p.parent.name for p in read.paths}
    assert read.class_names == sorted(folders) == build_cub(written, "train").class_names
    assert all(read.class_names[read.labels[i]] == read.paths[i].parent.name for i in range(len(read)))


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "train_test_split.txt",
                                  "bounding_boxes.txt", "parts/parts.txt", "parts/part_locs.txt"])
def test_missing_annotation_file_is_named(cub, name):
    (cub / name).unlink()
    with pytest.raises(CUBFormatError, match=rf"{re.escape(str(cub / name))}: missing"):
        build_cub(cub, "train")


@pytest.mark.parametrize("name, line, text, message", [
    # wrong field count
    ("bounding_boxes.txt", 2, "2 1.0 2.0 3.0", r"expected 5 fields \(image_id x y width height\), found 4"),
    ("parts/part_locs.txt", 6, "1 6 1.0 1.0 1 0",
     r"expected 5 fields \(image_id part_id x y visible\), found 6"),
    ("train_test_split.txt", 3, "3", r"expected 2 fields \(image_id is_training_image\), found 1"),
    ("images.txt", 2, "2", "expected an id and a name"),
    ("parts/parts.txt", 4, "4", "expected an id and a name"),
    # not a number, not an integer id
    ("image_class_labels.txt", 3, "3 three", "'three' is not a number"),
    ("parts/part_locs.txt", 5, "1 5 x 2.0 1", "'x' is not a number"),
    ("bounding_boxes.txt", 3, "3 1.0 2.0 3.0 4,0", "'4,0' is not a number"),
    ("images.txt", 1, "one 001.A/a.png", "'one' is not a number"),
    ("classes.txt", 2, "two 002.B", "'two' is not a number"),
    ("parts/parts.txt", 3, "III belly", "'III' is not a number"),
    ("train_test_split.txt", 2, "2.5 1", "image id 2.5 is not an integer"),
    ("image_class_labels.txt", 2, "2 nan", "class id nan is not an integer"),
    ("parts/part_locs.txt", 4, "1 4.5 1.0 1.0 1", "part id 4.5 is not an integer"),
    # duplicate ids
    ("images.txt", 3, "1 001.A/a.png", "image id 1 repeats line 1"),
    ("train_test_split.txt", 2, "1 1", "image id 1 repeats line 1"),
    ("image_class_labels.txt", 4, "2 1", "image id 2 repeats line 2"),
    ("bounding_boxes.txt", 5, "3 1 1 1 1", "image id 3 repeats line 3"),
    ("classes.txt", 3, "1 001.A", "class id 1 repeats line 1"),
    ("parts/parts.txt", 2, "1 back", "part id 1 repeats line 1"),
    ("parts/part_locs.txt", 3, "1 1 2.0 2.0 1", "image id 1, part id 1 repeats line 1"),
    # ids that are not in the file they refer to
    ("bounding_boxes.txt", 4, "99 1 1 1 1", "mismatched ids, image id 99 is not in images.txt"),
    ("image_class_labels.txt", 1, "0 1", "mismatched ids, image id 0 is not in images.txt"),
    ("train_test_split.txt", 5, "77 1", "mismatched ids, image id 77 is not in images.txt"),
    ("parts/part_locs.txt", 8, "500 1 1.0 1.0 1", "mismatched ids, image id 500 is not in images.txt"),
    ("parts/part_locs.txt", 7, "1 77 1.0 1.0 1", "part id 77 is not in parts/parts.txt"),
    ("image_class_labels.txt", 1, "1 9", r"class id 9 is not in classes.txt \(1..3\)"),
    ("image_class_labels.txt", 2, "2 0", r"class id 0 is not in classes.txt \(1..3\)"),
    ("classes.txt", 3, "7 007.G", r"class id 7 is not in 1..3 \(one line per class\)"),
    # values outside {0, 1}
    ("train_test_split.txt", 4, "4 2", "is_training_image 2 is not 0 or 1"),
    ("parts/part_locs.txt", 2, "1 2 0.0 0.0 -1", "visible -1 is not 0 or 1"),
])
def test_malformed_lines_name_file_and_line(cub, name, line, text, message):
    _replace_line(cub / name, line, text)
    with pytest.raises(CUBFormatError, match=rf"^{re.escape(str(cub / name))}, line {line}: {message}"):
        build_cub(cub, "train")


def test_class_id_out_of_range_without_classes_txt(cub):
    (cub / "classes.txt").unlink()
    _replace_line(cub / "image_class_labels.txt", 2, "2 0")
    with pytest.raises(CUBFormatError, match=r"image_class_labels.txt, line 2: class id 0 is not in 1..N"):
        build_cub(cub, "train")


@pytest.mark.parametrize("name", ["image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"])
def test_image_without_a_line_is_a_mismatch(cub, name):
    _write(cub / name, _lines(cub / name)[:-1])
    last = len(_lines(cub / "images.txt"))
    message = rf"{name}: mismatched ids, no line for image id {last} of images.txt"
    with pytest.raises(CUBFormatError, match=message):
        build_cub(cub, "train")


def test_unreadable_image_names_its_path(cub):
    dataset = build_cub(cub, "train")
    dataset.paths[1].write_bytes(dataset.paths[1].read_bytes()[:60])  # truncated PNG
    with pytest.raises(ImageReadError, match=re.escape(str(dataset.paths[1]))):
        dataset[1]
    dataset.paths[2].unlink()
    with pytest.raises(ImageReadError, match=rf"{re.escape(str(dataset.paths[2]))} does not exist"):
        dataset[2]
    dataset.paths[3].write_text("not an image")
    with pytest.raises(ImageReadError, match=re.escape(str(dataset.paths[3]))):
        dataset[3]
    assert dataset[0]["image"].shape == (3, 32, 32)  # the others still load


def test_bad_split_and_missing_root(cub):
    with pytest.raises(ValueError, match="split 'val'"):
        build_cub(cub, "val")
    with pytest.raises(ValueError, match="needs --root"):
        build_cub(None, "train")
