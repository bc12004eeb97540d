"""The generic image folder: round trip, class order, error paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from protobench.data.imagefolder import build_imagefolder


def _write(root, split, cls, name, value):
    path = root / split / cls / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((5, 7, 3), value, dtype=np.uint8)).save(path)


def test_round_trip_and_class_order(tmp_path):
    for split in ("train", "test"):
        _write(tmp_path, split, "zebra", "a.png", 200)
        _write(tmp_path, split, "ant", "b.png", 10)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    ds = build_imagefolder(tmp_path, "test")
    assert ds.class_names == ["ant", "zebra"] and len(ds) == 2
    item = ds[1]
    assert item["label"] == 1 and item["image"].shape == (3, 5, 7)
    assert torch.allclose(item["image"], torch.full((3, 5, 7), 200 / 255))


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        build_imagefolder(tmp_path, "train")
    _write(tmp_path, "train", "a", "x.png", 1)
    (tmp_path / "test" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"class folders \['b'\]"):
        build_imagefolder(tmp_path, "test")
    (tmp_path / "test" / "b").rmdir()
    (tmp_path / "test" / "a").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        build_imagefolder(tmp_path, "test")
    with pytest.raises(ValueError, match="split 'dev'"):
        build_imagefolder(tmp_path, "dev")
