"""The CUB-200-2011 reader: round trip through synthbirds written in the CUB layout, and every error path."""

from __future__ import annotations

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


@pytest.mark.parametrize("split", ["train", "test"])
def test_round_trip_through_the_cub_layout(written, split):
    read = build_cub(written.parent, split)  # the CUB_200_2011 subfolder is found
    original = build_synthbirds(None, split, None, **OPTIONS)
    assert len(read) == len(original) and read.num_classes == original.num_classes
    assert read.part_names == original.part_names
    assert [n.split(".", 1)[1] for n in read.class_names] == [n.replace(" ", "_") for n in original.class_names]
    for i in range(len(read)):
        a, b = read[i], original[i]
        assert torch.equal(a["image"], b["image"])  # PNG is lossless
        assert a["label"] == b["label"] and torch.equal(a["bbox"], b["bbox"])
        visible = b["keypoints"][:, 2] > 0
        assert torch.equal(a["keypoints"][:, 2] > 0, visible)
        assert torch.allclose(a["keypoints"][visible], b["keypoints"][visible])


def test_crop_to_bbox_moves_keypoints_by_the_box_origin(written):
    full, cropped = build_cub(written, "train"), build_cub(written, "train", crop_to_bbox=True)
    for i in range(3):
        x, y, w, h = full[i]["bbox"].tolist()
        assert cropped[i]["image"].shape[-2:] == (int(h), int(w))
        visible = full[i]["keypoints"][:, 2] > 0
        moved = full[i]["keypoints"][visible, :2] - torch.tensor([x, y])
        assert torch.allclose(cropped[i]["keypoints"][visible, :2], moved)


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "train_test_split.txt",
                                  "bounding_boxes.txt", "parts/parts.txt", "parts/part_locs.txt"])
def test_missing_annotation_file_is_named(cub, name):
    (cub / name).unlink()
    with pytest.raises(CUBFormatError, match=rf"{name}: missing"):
        build_cub(cub, "train")


def _replace_line(path, number, text):
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name, line, text, message", [
    ("bounding_boxes.txt", 2, "2 1.0 2.0 3.0", "expected 5 fields, found 4"),
    ("image_class_labels.txt", 3, "3 three", "'three' is not a number"),
    ("parts/part_locs.txt", 5, "1 5 x 2.0 1", "'x' is not a number"),
    ("train_test_split.txt", 2, "1 1", "id 1 repeats line 1"),
    ("bounding_boxes.txt", 4, "99 1 1 1 1", "image id 99 is not in images.txt"),
    ("parts/part_locs.txt", 7, "1 77 1.0 1.0 1", "part id 77 is not in parts/parts.txt"),
    ("parts/part_locs.txt", 8, "500 1 1.0 1.0 1", "image id 500 is not in images.txt"),
    ("image_class_labels.txt", 1, "1 9", "class id 9 is not in classes.txt"),
])
def test_malformed_lines_name_file_and_line(cub, name, line, text, message):
    _replace_line(cub / name, line, text)
    with pytest.raises(CUBFormatError, match=rf"{name}, line {line}: {message}"):
        build_cub(cub, "train")


def test_image_without_a_label_is_a_mismatch(cub):
    path = cub / "image_class_labels.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    last = len((cub / "images.txt").read_text().splitlines())
    with pytest.raises(CUBFormatError, match=rf"image_class_labels.txt: no line for image id {last} of images.txt"):
        build_cub(cub, "train")


def test_unreadable_image_names_its_path(cub):
    dataset = build_cub(cub, "train")
    dataset.paths[1].write_bytes(dataset.paths[1].read_bytes()[:60])  # truncated PNG
    with pytest.raises(ImageReadError, match=dataset.paths[1].name):
        dataset[1]
    dataset.paths[2].unlink()
    with pytest.raises(ImageReadError, match=rf"{dataset.paths[2].name} does not exist"):
        dataset[2]
    assert dataset[0]["image"].shape == (3, 32, 32)  # the others still load


def test_bad_split_and_missing_root(cub):
    with pytest.raises(ValueError, match="split 'val'"):
        build_cub(cub, "val")
    with pytest.raises(ValueError, match="needs --root"):
        build_cub(None, "train")
