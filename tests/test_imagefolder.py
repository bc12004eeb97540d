"""The generic image folder and the shared image reader: round trip, class order, error paths."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from protobench.data.imagefolder import build_imagefolder
from protobench.data.images import ImageReadError, read_image


def _write(root, split, cls, name, seed, size=(5, 7)):
    """A random RGB image; returns its pixels as the ``[3, H, W]`` tensor the reader should give."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path = root / split / cls / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def test_round_trip_and_class_order(tmp_path):
    expected = {}
    for seed, (split, cls, name) in enumerate([("train", "zebra", "a.png"), ("train", "ant", "b.PNG"),
                                               ("train", "moth", "c.bmp"), ("test", "zebra", "b.png"),
                                               ("test", "zebra", "a.png"), ("test", "ant", "z.png")]):
        expected[split, cls, name] = _write(tmp_path, split, cls, name, seed)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    train, test = build_imagefolder(tmp_path, "train"), build_imagefolder(tmp_path, "test")
    assert train.class_names == test.class_names == ["ant", "moth", "zebra"]
    assert train.num_classes == test.num_classes == 3 and (len(train), len(test)) == (3, 3)
    order = [("test", "ant", "z.png"), ("test", "zebra", "a.png"), ("test", "zebra", "b.png")]
    for i, key in enumerate(order):
        item = test[i]
        assert item.keys() == {"image", "label", "index"} and item["index"] == i
        assert item["label"] == test.class_names.index(key[1])
        assert torch.equal(item["image"], expected[key])
    assert {train[i]["label"] for i in range(3)} == {0, 1, 2}


def test_transform_is_applied(tmp_path):
    _write(tmp_path, "train", "a", "x.png", 0)

    def top_rows(item):
        return dict(item, image=item["image"][:, :2])

    assert build_imagefolder(tmp_path, "train", transform=top_rows)[0]["image"].shape == (3, 2, 7)


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "train"))):
        build_imagefolder(tmp_path, "train")
    _write(tmp_path, "train", "a", "x.png", 1)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "test"))):
        build_imagefolder(tmp_path, "test")
    (tmp_path / "test" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'test'}: class folders ['b'] are not in")):
        build_imagefolder(tmp_path, "test")
    (tmp_path / "test" / "b").rmdir()
    (tmp_path / "test" / "a").mkdir()
    (tmp_path / "test" / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'test'} holds no images")):
        build_imagefolder(tmp_path, "test")
    with pytest.raises(ValueError, match="split 'dev'"):
        build_imagefolder(tmp_path, "dev")
    with pytest.raises(ValueError, match="needs --root"):
        build_imagefolder(None, "train")


def test_unreadable_image_names_its_path(tmp_path):
    _write(tmp_path, "train", "a", "good.png", 0)
    bad = tmp_path / "train" / "a" / "bad.png"
    bad.write_text("not an image")
    dataset = build_imagefolder(tmp_path, "train")
    with pytest.raises(ImageReadError, match=re.escape(str(bad))):
        dataset[0]
    assert dataset[1]["image"].shape == (3, 5, 7)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_read_image_converts_to_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode != "I;16" else rgb.convert("L").convert("I;16")
    image.save(tmp_path / "x.png")
    expected = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255
    read = read_image(tmp_path / "x.png")
    assert read.dtype == torch.float32 and torch.equal(read, expected)
    assert 0 <= read.min() and read.max() <= 1


def test_read_image_errors_name_the_file(tmp_path):
    path = tmp_path / "x.png"
    with pytest.raises(ImageReadError, match=rf"{re.escape(str(path))} does not exist"):
        read_image(path)
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-30])  # truncated: the header opens, decoding fails
    with pytest.raises(ImageReadError, match=rf"image {re.escape(str(path))} is unreadable"):
        read_image(path)
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match=re.escape(str(path))):
        read_image(path)
    with pytest.raises(ImageReadError, match=re.escape(str(tmp_path))):
        read_image(tmp_path)  # a directory
