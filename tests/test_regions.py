"""protobench.regions: bicubic upsampling as cv2.INTER_CUBIC, the box around the maximum, the override hook."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protobench import regions as R
from protobench.contract import Explanation


def cv2_cubic_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] weights of OpenCV's INTER_CUBIC along one axis, written from its definition:
    half-pixel centres, Keys kernel with a = -0.75, out-of-range taps replicate the edge pixel."""
    a = -0.75

    def kernel(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return ((a + 2) * d - (a + 3)) * d * d + 1
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a if d < 2 else 0.0

    weights = np.zeros((dst, src))
    for i in range(dst):
        position = (i + 0.5) * src / dst - 0.5
        base = math.floor(position)
        for tap in range(base - 1, base + 3):
            weights[i, min(max(tap, 0), src - 1)] += kernel(position - tap)
    return weights


@pytest.mark.parametrize("grid, size", [((7, 7), (224, 224)), ((5, 3), (64, 40)), ((2, 2), (64, 64))])
def test_upsample_is_opencv_and_torch_bicubic(grid, size):
    maps = torch.rand(2, 3, *grid, generator=torch.Generator().manual_seed(0))
    expected = np.einsum("Hh,bphw,Ww->bpHW", cv2_cubic_matrix(grid[0], size[0]), maps.double().numpy(),
                         cv2_cubic_matrix(grid[1], size[1]))
    got = R.upsample(maps, size)
    assert got.shape == (2, 3, *size)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    torch_bicubic = F.interpolate(maps, size=size, mode="bicubic", align_corners=False)
    np.testing.assert_allclose(got.numpy(), torch_bicubic.numpy(), atol=1e-5)


def test_half_size_is_36_at_224_and_scales_with_the_input():
    assert R.half_size((224, 224)) == (36, 36)
    assert R.half_size((64, 64)) == (10, 10)  # 36 * 64 / 224 = 10.3
    assert R.half_size((448, 112)) == (72, 18)
    assert R.half_size((28, 28)) == (5, 5)  # 4.5 rounds half up


def one_hot(size: int, points: list[tuple[int, int]]) -> torch.Tensor:
    """[1, P, size, size] maps (already at image size, so upsampling is the identity) peaking at (y, x)."""
    maps = torch.zeros(1, len(points), size, size)
    for p, (y, x) in enumerate(points):
        maps[0, p, y, x] = 1.0
    return maps


def test_box_is_centred_on_the_maximum_and_clipped_at_the_borders():
    boxes = R.regions(one_hot(224, [(100, 120), (2, 3), (223, 223), (0, 200)]), (224, 224))
    assert boxes.tolist() == [[[84, 64, 156, 136],   # (x0, y0, x1, y1) = centre -+ 36, inclusive
                               [0, 0, 39, 38],        # clipped at 0
                               [187, 187, 224, 224],  # clipped at the image size, as the official min(224, .)
                               [164, 0, 224, 36]]]
    assert boxes.dtype == torch.long


def test_box_at_64_px_uses_the_scaled_half_size():
    boxes = R.regions(one_hot(64, [(30, 40)]), (64, 64))
    assert boxes[0, 0].tolist() == [30, 20, 50, 40]


def test_peak_of_an_upsampled_latent_cell_lies_at_the_cell_centre():
    maps = torch.zeros(1, 1, 7, 7)
    maps[0, 0, 2, 5] = 1.0
    y, x = R.peaks(maps, (224, 224))[0, 0].tolist()
    assert y in (2 * 32 + 15, 2 * 32 + 16) and x in (5 * 32 + 15, 5 * 32 + 16)
    assert R.regions(maps, (224, 224))[0, 0].tolist() == [x - 36, y - 36, x + 36, y + 36]


def test_ties_resolve_to_the_first_maximum_in_row_major_order():
    maps = one_hot(32, [(20, 3)])
    maps[0, 0, 20, 1] = maps[0, 0, 25, 0] = 1.0
    assert R.peaks(maps, (32, 32))[0, 0].tolist() == [20, 1]


def test_chunked_search_equals_one_argmax_per_map(monkeypatch):
    maps = torch.rand(5, 4, 7, 7, generator=torch.Generator().manual_seed(1))
    whole = R.peaks(maps, (56, 56))
    monkeypatch.setattr(R, "_CHUNK_PIXELS", 3 * 56 * 56)  # three maps per chunk
    assert torch.equal(R.peaks(maps, (56, 56)), whole)
    flat = R.upsample(maps, (56, 56)).flatten(2).argmax(dim=2)
    assert torch.equal(whole[..., 0] * 56 + whole[..., 1], flat)


def test_prototype_regions_selects_pairs_and_honours_a_model_hook():
    maps = torch.rand(3, 4, 7, 7, generator=torch.Generator().manual_seed(2))
    explanation = Explanation(logits=torch.zeros(3, 2), similarities=maps)
    pairs = torch.tensor([[0, 3], [2, 1], [2, 2]])
    full = R.prototype_regions(object(), explanation, (64, 64))
    assert full.shape == (3, 4, 4)
    assert torch.equal(R.prototype_regions(object(), explanation, (64, 64), pairs), full[pairs[:, 0], pairs[:, 1]])

    class Deformed:
        def regions(self, explanation, image_size):
            b, p = explanation.similarities.shape[:2]
            return torch.arange(b * p * 4).reshape(b, p, 4)

    hooked = R.prototype_regions(Deformed(), explanation, (64, 64), pairs)
    assert hooked.tolist() == [[12, 13, 14, 15], [36, 37, 38, 39], [40, 41, 42, 43]]
