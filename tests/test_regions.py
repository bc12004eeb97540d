"""protobench.explain.regions: bicubic upsampling as cv2.INTER_CUBIC, the exact search for its first maximum, the box
around it, the override hook."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protobench.api.contract import Explanation
from protobench.explain import regions as R


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


def first_maxima(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference: flat index of the first maximum of each fully upsampled map (``[..., h, w]`` -> ``[...]``)."""
    return R.upsample(maps, size).flatten(-2).argmax(-1)


def searched(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:func:`R.peaks` of ``[N, h, w]`` maps as flat indices ``[N]``."""
    yx = R.peaks(maps[None], size)[0]
    return yx[:, 0] * size[1] + yx[:, 1]


def test_chunked_search_equals_one_argmax_per_map(monkeypatch):
    maps = torch.rand(5, 4, 7, 7, generator=torch.Generator().manual_seed(1))
    whole = R.peaks(maps, (56, 56))
    monkeypatch.setattr(R, "_CHUNK_MAPS", 3)
    monkeypatch.setattr(R, "_CHUNK_PIXELS", 3 * 16 * 56 * 56)  # three maps per chunk of full upsampling
    assert torch.equal(R.peaks(maps, (56, 56)), whole)
    monkeypatch.setattr(R, "_MAX_TILES", 0)  # every map upsampled in full, in chunks
    assert torch.equal(R.peaks(maps, (56, 56)), whole)
    assert torch.equal(whole[..., 0] * 56 + whole[..., 1], first_maxima(maps, (56, 56)))


@pytest.mark.parametrize("grid, size", [((7, 7), (224, 224)), ((5, 3), (64, 40)), ((1, 9), (30, 70)),
                                        ((16, 16), (64, 64)), ((10, 10), (7, 13))])
def test_upsample_is_the_former_matrix_products_up_to_rounding(grid, size):
    """The same operator as the former BLAS products; their rounding order is the BLAS's (it differed between
    machines for the 1x9 grid), so only closeness is a property of ours."""
    maps = torch.randn(6, *grid, generator=torch.Generator().manual_seed(3))
    former = R.cubic_weights(grid[0], size[0]) @ (maps @ R.cubic_weights(grid[1], size[1]).T)
    torch.testing.assert_close(R.upsample(maps, size), former, rtol=1e-6, atol=1e-6)


def test_fma_rounds_once_even_where_float64_rounds_onto_a_float32_midpoint():
    a = torch.tensor([8863299 * 2.0 ** -23])  # a * b = 2^-24 + 209992 * 2^-71: a float64 sum with 1 rounds to
    b = torch.tensor([15878680 * 2.0 ** -48])  # the float32 midpoint 1 + 2^-24, which then rounds down
    one = torch.ones(1)
    assert (a.double() * b.double() + 1).float().item() == 1.0
    assert R._fma(a, b, one).item() == 1 + 2.0 ** -23

    def rounded(q: Fraction) -> float:  # exact rational -> nearest float32, ties to even
        near = np.float32(float(q))
        options = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
        return float(min(options, key=lambda v: (abs(Fraction(float(v)) - q), int(v.view(np.int32)) & 1)))

    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 300, generator=g) * torch.tensor([[1.0], [1e-4], [1e4]]), torch.randn(3, 300, generator=g)
    c = torch.randn(3, 300, generator=g)
    got = R._fma(a, b, c).flatten().tolist()
    exact = [rounded(Fraction(x) * Fraction(y) + Fraction(z))
             for x, y, z in zip(a.flatten().tolist(), b.flatten().tolist(), c.flatten().tolist())]
    assert got == exact


SIZES = [((7, 7), (224, 224)), ((4, 4), (64, 64)), ((8, 8), (64, 64)), ((1, 9), (32, 70)), ((9, 1), (70, 32)),
         ((5, 3), (64, 40)), ((3, 6), (40, 100)), ((16, 16), (64, 64)), ((2, 2), (64, 64))]


def tie_maps(grid: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """Maps whose maximum is tied or nearly tied: constant, quantised, plateaus, repeated bumps, nearly flat."""
    h, w = grid
    constant = torch.full((3, h, w), 0.7)
    constant[1], constant[2] = 0.0, -3.25
    quantised = torch.randint(0, 3, (6, h, w), generator=g).float()
    plateau = torch.rand(4, h, w, generator=g)
    plateau[:, : max(1, h // 2), : max(1, w // 2)] = 1.5
    bumps = torch.zeros(2, h, w)
    bumps[:, h // 2, :: 3] = 1.0  # identical neighbourhoods at an integer scale: exact ties
    bumps[1] = bumps[1] * 0.25 + 2.0
    nearly_flat = torch.randn(4, h, w, generator=g) * 1e-3 + 4
    return torch.cat([constant, quantised, plateau, bumps, nearly_flat])


@pytest.mark.parametrize("grid, size", SIZES)
def test_search_finds_the_first_maximum_of_the_full_upsampling(grid, size):
    g = torch.Generator().manual_seed(5)
    maps = torch.cat([torch.rand(20, *grid, generator=g), tie_maps(grid, g)])
    assert torch.equal(searched(maps, size), first_maxima(maps, size))
    ay, ax = (R._axis(s, d, torch.device("cpu")) for s, d in zip(grid, size))
    found, decided = R._search(maps[:20], ay, ax, size[1])
    assert decided.all(), "random maps must not fall back to full upsampling"
    assert torch.equal(found, first_maxima(maps[:20], size))


@pytest.mark.parametrize("grid, size", SIZES)
def test_search_is_exact_on_ties_without_falling_back(grid, size, monkeypatch):
    monkeypatch.setattr(R, "_MAX_TILES", 10 ** 9)  # constant maps and plateaus stay in the search
    maps = tie_maps(grid, torch.Generator().manual_seed(6))
    assert torch.equal(searched(maps, size), first_maxima(maps, size))


def test_maps_that_are_not_finite_or_huge_are_upsampled_in_full():
    maps = torch.rand(5, 7, 7, generator=torch.Generator().manual_seed(7))
    maps[0, 3, 3], maps[1, 0, 6], maps[2, 2, 2], maps[3] = torch.inf, -torch.inf, torch.nan, 3e38
    assert torch.equal(searched(maps, (64, 64)), first_maxima(maps, (64, 64)))


def test_bound_constants_hold_for_every_tiling():
    """The slack (module docstring) assumes coefficients and weights of magnitude at most 1.125."""
    for src in (1, 2, 3, 4, 7, 8, 14):
        for dst in (1, 5, 7, 13, 40, 64, 100, 224):
            axis = R._axis(src, dst, torch.device("cpu"))
            largest = max(t.inner.abs().max() for t in axis.tilings)
            assert max(largest, axis.blocks.abs().max(), axis.weights.abs().max()) <= 1.125


def corner_pixels(axis, dst: int) -> list[int]:
    """Output pixels whose weights are the rows of ``axis.corners``: each block's first and last pixel (all of a
    block of at most 4)."""
    first = axis.tilings[0].first.tolist()
    last = [f - 1 for f in first[1:]] + [dst - 1]
    return [f + r if l - f < 4 else (f if r == 0 else l)
            for f, l, pixel in zip(first, last, axis.tilings[0].pixel.tolist()) for r in range(4) if pixel[r]]


@pytest.mark.parametrize("grid, size", [((7, 7), (224, 224)), ((5, 3), (64, 40)), ((8, 8), (64, 64))])
def test_slack_is_four_times_the_rounding_of_the_bounds(grid, size):
    """Float32 bounds at pixels (the blocks' corner coefficients) against the exact float32 pixel values."""
    g = torch.Generator().manual_seed(9)
    maps = torch.cat([torch.rand(40, *grid, generator=g) * 10 - 3, torch.randn(40, *grid, generator=g) * 1e5])
    ay, ax = (R._axis(s, d, torch.device("cpu")) for s, d in zip(grid, size))
    bounds = ay.corners @ maps @ ax.corners.T
    exact = R.upsample(maps, size)[:, corner_pixels(ay, size[0])][:, :, corner_pixels(ax, size[1])]
    slack = maps.abs().flatten(1).amax(1) * R._SLACK
    assert ((bounds - exact).abs() <= slack[:, None, None] / 4).all()


def test_search_matches_opencv_first_hit_on_random_maps():
    """EvalProtoPNet's ``np.where(m == m.max())`` first hit of ``cv2.resize(m, INTER_CUBIC)``.

    OpenCV rounds differently in the last bits, so where they differ OpenCV's own maximum must be a
    near-tie (within 4 ulps) at protobench's pixel.
    """
    cv2 = pytest.importorskip("cv2", reason="the OpenCV cross-check needs cv2 (opencv, installed with imagecorruptions in the dev extra)")
    g = torch.Generator().manual_seed(8)
    cases = [(torch.rand(300, 7, 7, generator=g), (224, 224)), (torch.randn(100, 5, 3, generator=g), (64, 40)),
             (torch.rand(100, 8, 8, generator=g), (64, 64))]
    ties = 0
    for maps, (height, width) in cases:
        for m, index in zip(maps.numpy(), searched(maps, (height, width)).tolist()):
            upsampled = cv2.resize(m, (width, height), interpolation=cv2.INTER_CUBIC)
            ys, xs = np.where(upsampled == upsampled.max())
            if (ys[0] * width + xs[0]) != index:
                ties += 1
                assert upsampled.flat[index] >= upsampled.max() - 4 * np.spacing(upsampled.max())
    assert ties <= 2


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
