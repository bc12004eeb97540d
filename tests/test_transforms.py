"""Keypoint-aware transforms: geometry moves with the image."""

from __future__ import annotations

import random

import torch

from protobench.data.transforms import CropToBox, RandomHorizontalFlip, RandomShiftCrop, Resize


def _item():
    image = torch.zeros(3, 10, 20)
    image[:, 2, 5] = 1.0  # a marked pixel at x=5, y=2, which keypoint 0 points at
    keypoints = torch.tensor([[5.0, 2.0, 1.0], [19.0, 9.0, 1.0], [3.0, 3.0, 0.0]])
    return {"image": image, "label": 1, "index": 0, "keypoints": keypoints, "bbox": torch.tensor([4.0, 1.0, 10.0, 6.0])}


def test_resize_scales_keypoints_and_box():
    out = Resize((20, 40))(_item())
    assert out["image"].shape == (3, 20, 40)
    assert out["keypoints"][0].tolist() == [10.0, 4.0, 1.0]
    assert out["bbox"].tolist() == [8.0, 2.0, 20.0, 12.0]


def test_flip_mirrors_keypoints_onto_the_same_pixel():
    random.seed(0)
    out = RandomHorizontalFlip(p=1.0)(_item())
    x, y, _ = out["keypoints"][0].tolist()
    assert out["image"][0, int(y), int(x)] == 1.0 and x == 14.0
    assert out["bbox"].tolist() == [6.0, 1.0, 10.0, 6.0]


def test_crop_to_box_moves_keypoints_and_hides_those_outside():
    out = CropToBox()(_item())
    assert out["image"].shape == (3, 6, 10)
    x, y, v = out["keypoints"][0].tolist()
    assert (x, y, v) == (1.0, 1.0, 1.0) and out["image"][0, 1, 1] == 1.0
    assert out["keypoints"][1, 2] == 0  # (19, 9) lies outside the box
    assert out["bbox"].tolist() == [0.0, 0.0, 10.0, 6.0]


def test_shift_keeps_the_marked_pixel_under_its_keypoint():
    random.seed(3)
    for _ in range(5):
        out = RandomShiftCrop(2)(_item())
        x, y, v = out["keypoints"][0].tolist()
        assert v == 1.0 and out["image"][0, int(y), int(x)] == 1.0
