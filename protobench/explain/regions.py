"""Image-space regions of prototypes: similarity map -> upsampled map -> region (DESIGN.md, "PrototypeModel").

The default follows Huang et al., "Evaluation and Improvement of Interpretability for Self-Explainable
Part-Prototype Networks", ICCV 2023, section "Consistency Score" (the prototype's activated region), as the
official code computes it (github hqhQAQ/EvalProtoPNet, ``util/eval_interpretability.py``,
``get_corresponding_object_parts``):

1. the prototype's similarity map over the latent grid is upsampled to the image size with bicubic
   interpolation (``cv2.resize(..., interpolation=cv2.INTER_CUBIC)``: half-pixel centres, Keys' cubic
   kernel with a = -0.75, edge pixels replicated; the same operator as
   ``F.interpolate(mode="bicubic", align_corners=False)``);
2. the first maximum of the upsampled map in row-major order is the centre (``np.where(map == map.max())``,
   first hit);
3. the region is the box ``[centre - half, centre + half]`` on each axis, clipped to ``[0, size]``, both
   ends inclusive (``util/local_parts.py``, ``in_bbox``).

Arithmetic. An upsampled pixel is computed as OpenCV does, separably, along x first: each source row
is interpolated at the pixel's column, then those values at the pixel's row, in float32 with the weights
of :func:`cubic_weights`. Each of the two 4-tap sums is one chain of fused multiply-adds in ascending
source order (the order MKL's ``rows @ (maps @ columns.T)`` used for most shapes on the machine where
this was written; BLAS order varies with shape and machine), which :func:`upsample` emulates exactly
(:func:`_fma`), so that the values, and with them the first maximum among ties, do not depend on the BLAS
or the device. (OpenCV's own float32 rounding differs in the last
bits, so on a near-tie within a few ulps its first hit can be a neighbouring pixel: 1 pair in 20,000 in
``benchmarks/region_speed.py``.)

Search (:func:`peaks`): the first maximum without upsampling the whole map, the same pixel as
``upsample(maps).flatten(1).argmax(1)``, ties included. On each axis the output pixels that share their
four taps (the same floor position) form a block, over which each tap's weight is a cubic polynomial in
the pixel coordinate, so over a tile of a block the upsampled map is a bicubic polynomial of the 4 x 4
source neighbourhood. Its 4 x 4 Bernstein coefficients bound it above (convex hull), and its corner
coefficients are the values at the tile's corner pixels; a tile of at most 4 pixels per axis uses its
pixels' weights instead, so that its coefficients are its pixel values. Level by level (blocks, tiles of
at most 16, then 4 pixels), each map keeps the tiles whose largest coefficient reaches the best corner
value seen (both widened by a slack), in one batch for all maps; the pixels left that reach it are
evaluated exactly, as :func:`upsample` does, and the first of those equal to their map's maximum in
row-major order is the peak. The slack ``2^-12 * max|map|`` covers the rounding: the float32 pixel lies
within about 13 ulps of ``sum|taps|`` of the polynomial (two 4-term FMA chains, the weights' rounding),
the float32 bounds (coefficients at most 1.125 in magnitude) and comparisons within about 30 more, and
``sum|taps| <= 16 * max|map|`` (together below ``2^-14.5 * max|map|``; measured: below 1/500 of the slack). So every pixel equal to the maximum survives each level and the
result is exact. Maps that are not finite, of magnitude above 2^100, or that keep more than
:data:`_MAX_TILES` tiles at one level (constant maps, plateaus) are upsampled in full instead.

Boxes are ``LongTensor[..., 4]`` of inclusive pixel bounds ``(x0, y0, x1, y1)``: pixel (x, y) lies in the
box when ``x0 <= x <= x1`` and ``y0 <= y <= y1``.

Named departure: the official half size, 36 px, is stated at the official 224 px input; for other input
sizes it is scaled in proportion, per axis, and rounded half up (:func:`half_size`), e.g. 10 px at 64 px.

Override hook: a model family whose paper defines regions differently (ProtoViT's deformed parts) gives
its model a method ``regions(explanation, image_size) -> LongTensor[B, P, 4]`` in the box convention
above; :func:`prototype_regions` then uses it instead of the default.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

#: Half side of the activated region in pixels at the official input size: EvalProtoPNet
#: util/eval_interpretability.py, ``evaluate_consistency`` / ``evaluate_stability`` (``half_size=36``).
HALF_SIZE = 36
#: The input size (px) at which :data:`HALF_SIZE` is stated: EvalProtoPNet eval_consistency.py /
#: eval_stability.py (``--input_size`` default 224), the resolution of the paper's experiments.
REFERENCE_SIZE = 224
#: The cubic kernel's a: OpenCV's INTER_CUBIC (``interpolateCubic``, A = -0.75), which EvalProtoPNet's
#: ``get_corresponding_object_parts`` upsamples with (``cv2.resize(..., interpolation=cv2.INTER_CUBIC)``).
CUBIC_A = -0.75
#: Values held at once: the search's first level (float32), and sixteen times fewer pixels upsampled in
#: full (:func:`_fma` keeps about eight float64 temporaries per pixel).
_CHUNK_PIXELS = 1 << 24
#: Maps searched at once; the search's memory grows with them, not with the image size.
_CHUNK_MAPS = 512
#: Largest tile (output pixels per axis) at each level of the search after the blocks; the last is <= 4.
_TILES = (16, 4)
#: Tiles a map may keep at one level of the search before it is upsampled in full instead.
_MAX_TILES = 24
#: Slack of the bounds, relative to the map's largest magnitude (module docstring), and absolute
#: (float32 underflow: at most 2^-149 per rounding).
_SLACK = 2.0 ** -12
_TINY = 2.0 ** -120
#: Maps above this magnitude are upsampled in full (the search's error bound assumes no float32 overflow).
_HUGE = 2.0 ** 100
#: Values at t = 0, 1/3, 2/3, 1 -> Bernstein coefficients of a cubic on [0, 1].
_BERNSTEIN = torch.tensor([[6, 0, 0, 0], [-5, 18, -9, 2], [2, -9, 18, -5], [0, 0, 0, 6]], dtype=torch.float64) / 6


def half_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """Region half sizes ``(half_y, half_x)``: :data:`HALF_SIZE` scaled from :data:`REFERENCE_SIZE`."""
    return tuple(int(HALF_SIZE * s / REFERENCE_SIZE + 0.5) for s in image_size)  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def cubic_weights(src: int, dst: int) -> Tensor:
    """``[dst, src]`` float32 weights of bicubic resizing along one axis (half-pixel centres, edges replicated)."""
    a = CUBIC_A
    position = (torch.arange(dst, dtype=torch.float64) + 0.5) * src / dst - 0.5
    base = position.floor()
    weights = torch.zeros(dst, src, dtype=torch.float64)
    for offset in range(-1, 3):  # the kernel's four taps
        tap = base + offset
        d = (position - tap).abs()
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        w = torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))
        weights.index_put_((torch.arange(dst), tap.clamp(0, src - 1).long()), w, accumulate=True)
    return weights.float()


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a * b + c`` of float32 tensors rounded once to float32 (a fused multiply-add), exactly.

    The product is exact in float64; the sum is rounded to odd in float64 (TwoSum gives its error), after
    which rounding to float32 is correct (Boldo and Melquiond, "Emulation of FMA and correctly rounded sums:
    proved algorithms using rounding to odd", IEEE Trans. Computers 57(4), 2008).
    """
    p, c = a.double() * b.double(), c.double()
    s = p + c
    v = s - p
    error = (p - (s - v)) + (c - v)  # TwoSum (Knuth): p + c == s + error exactly
    bits = s.view(torch.int64)
    even = (error != 0) & (bits & 1 == 0) & s.isfinite()  # inexact with an even last bit: step towards p + c
    odd = (bits + torch.where((error > 0) == (s > 0), 1, -1)).view(torch.float64)
    return torch.where(even, odd, s).float()


@dataclass(frozen=True)
class _Tiling:
    """One level of the search along one axis: tiles of output pixels that share their taps."""

    first: Tensor  # [T] first output pixel
    pixel: Tensor  # [T, 4] whether coefficient row r is the weights of a pixel (of pixel first + r if <= 4 px)
    children: Tensor  # [T, C] the next level's tiles inside each tile, -1 padded
    inner: Tensor  # [T, C * 4, K] coefficients of those children, zero rows for padding
    inner_penalty: Tensor  # [T, C * 4] 0 on their pixel rows, -inf elsewhere
    same: bool  # each tile is its parent's only child: nothing to refine


@dataclass(frozen=True)
class _Axis:
    """Bicubic resizing along one axis: each output pixel's taps and weights, and the search's tilings."""

    start: Tensor  # [dst] first source index of each pixel's taps
    weights: Tensor  # [dst, K] float32 weights of those taps (entries of :func:`cubic_weights`)
    windows: Tensor  # [B] first source index of the taps of each block (level 0)
    blocks: Tensor  # [B * 4, src] coefficients of the blocks, each row at its source indices
    corners: Tensor  # [C, src] the rows of ``blocks`` that are the weights of a pixel
    tilings: tuple[_Tiling, ...]


def _kernel_rows(src: int, dst: int, at: list[float], base: int, window: int, taps: int) -> Tensor:
    """``[len(at), taps]`` float64 kernel weights at output coordinates ``at`` sharing the floor ``base``."""
    a = CUBIC_A
    t = (torch.tensor(at, dtype=torch.float64) + 0.5) * src / dst - 0.5 - base
    rows = torch.zeros(len(at), taps, dtype=torch.float64)
    for offset, d in zip(range(-1, 3), (1 + t, t, 1 - t, 2 - t)):
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        rows[:, min(max(base + offset, 0), src - 1) - window] += near if offset in (0, 1) else far
    return rows


@functools.lru_cache(maxsize=64)
def _axis(src: int, dst: int, device: torch.device) -> _Axis:
    """The taps, weights and search tilings of resizing ``src`` to ``dst`` pixels, on ``device``."""
    taps = min(4, src)
    position = (torch.arange(dst, dtype=torch.float64) + 0.5) * src / dst - 0.5
    base = position.floor().long()
    start = (base - 1).clamp(0, src - taps)
    weights = cubic_weights(src, dst).gather(1, start[:, None] + torch.arange(taps))
    cuts = [0, *(torch.nonzero(base[1:] != base[:-1]).flatten() + 1).tolist(), dst]
    levels = [[(first, next_first - 1) for first, next_first in itertools.pairwise(cuts)]]
    children: list[list[list[int]]] = []
    for size in _TILES:
        finer: list[tuple[int, int]] = []
        children.append([])
        for first, last in levels[-1]:
            children[-1].append(list(range(len(finer), len(finer) + -(-(last - first + 1) // size))))
            finer += [(f, min(f + size - 1, last)) for f in range(first, last + 1, size)]
        levels.append(finer)
    children.append([[] for _ in levels[-1]])
    coefficients, pixels = [], []
    for tiles in levels:
        rows, pixel = [], []
        for first, last in tiles:
            floor, window = int(base[first]), int(start[first])
            if last - first < 4:
                at = [min(first + r, last) for r in range(4)]
                rows.append(_kernel_rows(src, dst, at, floor, window, taps))
                pixel.append([first + r <= last for r in range(4)])
            else:
                at = [first + (last - first) * r / 3 for r in range(4)]
                rows.append(_BERNSTEIN @ _kernel_rows(src, dst, at, floor, window, taps))
                pixel.append([True, False, False, True])
        coefficients.append(torch.stack(rows).float())
        pixels.append(torch.tensor(pixel))
    tilings = []
    for level, tiles in enumerate(levels):
        width = max(1, *map(len, children[level]))
        inside = torch.tensor([c + [-1] * (width - len(c)) for c in children[level]], dtype=torch.long)
        inner = torch.zeros(len(tiles), width, 4, taps)
        penalty = torch.full((len(tiles), width, 4), -torch.inf)
        if level + 1 < len(levels):
            inner[inside >= 0] = coefficients[level + 1][inside[inside >= 0]]
            penalty[inside >= 0] = torch.where(pixels[level + 1][inside[inside >= 0]], 0.0, -torch.inf)
        tilings.append(_Tiling(
            torch.tensor([first for first, _ in tiles], device=device), pixels[level].to(device),
            inside.to(device), inner.reshape(len(tiles), -1, taps).to(device),
            penalty.reshape(len(tiles), -1).to(device), level > 0 and len(tiles) == len(levels[level - 1])))
    windows = start[[first for first, _ in levels[0]]]
    blocks = torch.zeros(len(levels[0]), 4, src)
    blocks.scatter_(2, (windows[:, None, None] + torch.arange(taps)).expand(-1, 4, -1), coefficients[0])
    blocks = blocks.reshape(-1, src)
    return _Axis(start.to(device), weights.to(device), windows.to(device), blocks.to(device),
                 blocks[pixels[0].flatten()].to(device), tuple(tilings))


def upsample(similarities: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Bicubic upsampling of ``[..., h, w]`` similarity maps to ``[..., H, W]`` (float32, module docstring)."""
    maps = similarities.float()
    *lead, h, w = maps.shape
    height, width = image_size
    ay, ax = _axis(h, height, maps.device), _axis(w, width, maps.device)
    flat = maps.reshape(-1, h, w)
    out = flat.new_empty(len(flat), height, width)
    step = max(1, _CHUNK_PIXELS // (16 * height * width))
    for s in range(0, len(flat), step):
        chunk = flat[s:s + step]
        rows = chunk.new_zeros(len(chunk), h, width)
        for q in range(ax.weights.shape[1]):
            rows = _fma(ax.weights[:, q], chunk[:, :, ax.start + q], rows)
        pixels = chunk.new_zeros(len(chunk), height, width)
        for q in range(ay.weights.shape[1]):
            pixels = _fma(ay.weights[:, q, None], rows[:, ay.start + q], pixels)
        out[s:s + step] = pixels
    return out.reshape(*lead, height, width)


def _pixels(maps: Tensor, owner: Tensor, y: Tensor, x: Tensor, ay: _Axis, ax: _Axis) -> Tensor:
    """Float32 values of upsampled pixels ``(y, x)`` of ``maps[owner]``, computed as :func:`upsample` does."""
    ky, kx = ay.weights.shape[1], ax.weights.shape[1]
    rows = (ay.start[y, None] + torch.arange(ky, device=maps.device))[:, :, None]
    columns = (ax.start[x, None] + torch.arange(kx, device=maps.device))[:, None, :]
    taps = maps[owner[:, None, None], rows, columns]
    interpolated = maps.new_zeros(len(owner), ky)
    for q in range(kx):
        interpolated = _fma(ax.weights[x, q, None], taps[:, :, q], interpolated)
    value = maps.new_zeros(len(owner))
    for q in range(ky):
        value = _fma(ay.weights[y, q], interpolated[:, q], value)
    return value


def _search(maps: Tensor, ay: _Axis, ax: _Axis, width: int) -> tuple[Tensor, Tensor]:
    """Flat index of each upsampled map's first maximum (module docstring), and whether the search decided it.

    ``maps`` is ``[N, h, w]`` float32, finite, of magnitude at most :data:`_HUGE`. An item is one tile
    (row tile ``ry`` x column tile ``rx`` of the current level) of map ``owner``, with its coefficients
    ``bounds`` and source neighbourhood ``taps``.
    """
    n, h, w = maps.shape
    device = maps.device
    slack = maps.abs().flatten(1).amax(1) * _SLACK + _TINY
    by, bx = len(ay.windows), len(ax.windows)
    columns = maps.transpose(0, 1).reshape(h, n * w)
    corner = (ay.corners @ columns).view(-1, w) @ ax.corners.T
    lower = corner.view(-1, n, len(ax.corners)).amax(2).amax(0) - slack
    grid = ((ay.blocks @ columns).view(-1, w) @ ax.blocks.T).view(by, 4, n, bx, 4)
    ry, owner, rx = (grid.amax(4).amax(1) + (slack - lower)[:, None] >= 0).nonzero(as_tuple=True)
    bounds = grid[ry, :, owner, rx, :]
    ky, kx = ay.weights.shape[1], ax.weights.shape[1]
    index = ((owner * h + ay.windows[ry])[:, None, None] + torch.arange(ky, device=device)[:, None]) * w
    taps = maps.flatten()[index + (ax.windows[rx][:, None, None] + torch.arange(kx, device=device))]
    decided = torch.ones(n, dtype=torch.bool, device=device)
    for level in range(1, len(ay.tilings) + 1):
        decided &= torch.bincount(owner, minlength=n) <= _MAX_TILES
        keep = decided[owner]
        owner, ry, rx, bounds, taps = owner[keep], ry[keep], rx[keep], bounds[keep], taps[keep]
        if level == len(ay.tilings):
            break
        ty, tx = ay.tilings[level - 1], ax.tilings[level - 1]
        if ay.tilings[level].same and ax.tilings[level].same:
            ry, rx = ty.children[ry, 0], tx.children[rx, 0]
            continue
        cy, cx = ty.children[ry], tx.children[rx]
        grid = ty.inner[ry] @ taps @ tx.inner[rx].mT
        corner = (grid + ty.inner_penalty[ry][:, :, None] + tx.inner_penalty[rx][:, None, :]).amax((1, 2))
        lower = lower.scatter_reduce(0, owner, corner - slack[owner], "amax")
        grid = grid.view(len(owner), cy.shape[1], 4, cx.shape[1], 4)
        reach = grid.amax((2, 4)) + (slack - lower)[owner, None, None] >= 0
        item, r, c = (reach & (cy >= 0)[:, :, None] & (cx >= 0)[:, None, :]).nonzero(as_tuple=True)
        owner, ry, rx, bounds, taps = owner[item], cy[item, r], cx[item, c], grid[item, r, :, c, :], taps[item]
    pixel = ay.tilings[-1].pixel[ry][:, :, None] & ax.tilings[-1].pixel[rx][:, None, :]
    item, r, c = (pixel & (bounds + (slack - lower)[owner, None, None] >= 0)).nonzero(as_tuple=True)
    owner, y, x = owner[item], ay.tilings[-1].first[ry[item]] + r, ax.tilings[-1].first[rx[item]] + c
    value = _pixels(maps, owner, y, x, ay, ax)
    best = value.new_full((n,), -torch.inf).scatter_reduce(0, owner, value, "amax")
    top = value == best[owner]
    first = owner.new_full((n,), -1).scatter_reduce(0, owner[top], (y * width + x)[top], "amin", include_self=False)
    return first, decided


def peaks(similarities: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``LongTensor[B, P, 2]``: ``(y, x)`` of the first maximum of each upsampled map (row-major order).

    The same as ``upsample(similarities, image_size).flatten(2).argmax(2)``, found by a bounded search that
    upsamples a few pixels per map (module docstring).
    """
    b, p, h, w = similarities.shape
    height, width = image_size
    maps = similarities.reshape(b * p, h, w).float()
    index = maps.new_zeros(len(maps), dtype=torch.long)
    if len(maps):
        ay, ax = _axis(h, height, maps.device), _axis(w, width, maps.device)
        magnitude = maps.abs().flatten(1).amax(1)
        full = ~(magnitude <= _HUGE)  # NaN, infinite or huge
        step = max(1, min(_CHUNK_MAPS, _CHUNK_PIXELS // (len(ay.blocks) * len(ax.blocks))))
        for chunk in (~full).nonzero().flatten().split(step):
            found, decided = _search(maps[chunk], ay, ax, width)
            index[chunk] = found
            full[chunk[~decided]] = True
        step = max(1, _CHUNK_PIXELS // (16 * height * width))
        for chunk in full.nonzero().flatten().split(step):
            index[chunk] = upsample(maps[chunk], image_size).flatten(1).argmax(dim=1)
    return torch.stack([index // width, index % width], dim=-1).reshape(b, p, 2)


def regions(
    similarities: Tensor, image_size: tuple[int, int], half: tuple[int, int] | None = None
) -> Tensor:
    """Boxes ``LongTensor[B, P, 4]`` ``(x0, y0, x1, y1)`` around each map's upsampled maximum.

    ``half`` is ``(half_y, half_x)``; by default :func:`half_size` of ``image_size``. Bounds are clipped
    to ``[0, H]`` and ``[0, W]`` as the official code does (``min(img_size, centre + half_size)``).
    """
    half_y, half_x = half if half is not None else half_size(image_size)
    height, width = image_size
    centre = peaks(similarities, image_size)
    y, x = centre[..., 0], centre[..., 1]
    return torch.stack([
        (x - half_x).clamp(min=0), (y - half_y).clamp(min=0),
        (x + half_x).clamp(max=width), (y + half_y).clamp(max=height),
    ], dim=-1)


def prototype_regions(
    model: Any, explanation: Any, image_size: tuple[int, int], pairs: Tensor | None = None
) -> Tensor:
    """The model's prototype regions: its ``regions(explanation, image_size)`` hook, else :func:`regions`.

    With ``pairs`` (``LongTensor[N, 2]`` of (image, prototype) indices) only those boxes are returned,
    ``[N, 4]``; the default path then searches only those maps. Without it: ``[B, P, 4]``.
    """
    hook = getattr(model, "regions", None)
    if pairs is not None:
        pairs = pairs.to(explanation.similarities.device)
    if callable(hook):
        boxes = hook(explanation, image_size)
        return boxes if pairs is None else boxes[pairs[:, 0], pairs[:, 1]]
    sims = explanation.similarities
    if pairs is None:
        return regions(sims, image_size)
    return regions(sims[pairs[:, 0], pairs[:, 1]][:, None], image_size)[:, 0]
