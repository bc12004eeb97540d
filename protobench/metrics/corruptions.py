"""Common corruptions of ImageNet-C (Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", ICLR 2019), batched in torch on the images' device.

Every corruption is ``fn(images, severity, generator) -> images``: float ``[B, 3, H, W]`` in ``[0, 1]``
(pixel space, protobench.api.contract) in and out, severity 1..5 (0 returns the input unchanged). Definitions
and constants are those of the reference implementation, the ``imagecorruptions`` package (github
bethgelab/imagecorruptions, ``imagecorruptions/corruptions.py``, v1.1.2), which generalises Hendrycks'
``make_imagenet_c.py`` (github hendrycks/robustness, ``ImageNet-C/create_c/make_imagenet_c.py``) from
224 x 224 to any image size: each corruption runs at the image's actual size with the reference's pixel
constants (kernel radii, shifts), which were chosen for 224 x 224 images and are harsher on smaller ones.
The constants of these eight corruptions are also those of ``make_imagenet_c.py``. (Hendrycks' 64 x 64
variant, ``make_imagenet_64_c.py``, uses other, milder constants; we do not.)

Named departures from the reference:

* No uint8 round trip. The reference takes and returns uint8 images (``imagecorruptions.corrupt``
  truncates its float result with ``np.uint8``); we stay in float, so our result is the reference's before
  that truncation (up to 1 grey level above it). ``jpeg_compression`` is the exception: the codec needs
  uint8, so its input is rounded to 8 bits, as any JPEG file is.
* Random draws come from torch generators, not numpy's global state, so noise differs draw by draw and
  agrees in distribution. ``generator`` is one ``torch.Generator`` for the whole batch, or one per image
  (image i draws from ``generator[i]``: the same image gets the same corruption whatever batch it is in), or
  None (torch's default generator). A generator's draws are made on its own device and moved to the images'.
* ``motion_blur``: the reference, like ours, is a weighted sum of shifted copies of the image
  (``imagecorruptions._motion_blur``, its numpy replacement for ImageMagick); Hendrycks' original calls
  ImageMagick's ``MagickMotionBlurImage`` through Wand, which we do not reproduce.
* ``pixelate``: box down-sampling, then nearest up-sampling, as ``imagecorruptions``; Hendrycks' original
  up-samples with PIL's BOX filter, and fixes the sizes to 224. Our box down-sampling reproduces PIL's BOX
  weights exactly but in float, without PIL's 8-bit rounding after each of its two passes.
* ``jpeg_compression`` is a codec, not arithmetic: each image goes through PIL's JPEG encoder and decoder on
  the CPU, one at a time (the reference's own encoder, so results equal it).
* ImageNet-C's files were saved as JPEG (quality 85) after corruption; corruptions here are applied on the
  fly, with no such second compression.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

#: One generator for the batch, one per image, or None (torch's default generator).
Generators = torch.Generator | Sequence[torch.Generator] | None

SEVERITIES = (1, 2, 3, 4, 5)

#: ``gaussian_noise``: standard deviation c of the additive noise ``x + N(0, c^2)``, per severity
#: (imagecorruptions ``gaussian_noise``).
GAUSSIAN_NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
#: ``shot_noise``: photon count c of a full-scale pixel, ``Poisson(x * c) / c`` (imagecorruptions
#: ``shot_noise``).
SHOT_NOISE_PHOTONS = (60, 25, 12, 5, 3)
#: ``defocus_blur``: (disk radius in pixels, sigma of the Gaussian that anti-aliases the disk)
#: (imagecorruptions ``defocus_blur`` and ``disk``).
DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))
#: ``disk``: a disk of radius <= 8 is drawn on a 17 x 17 grid and anti-aliased with a 3 x 3 Gaussian, a larger
#: one on a (2r+1)^2 grid with a 5 x 5 Gaussian (imagecorruptions ``disk``).
DISK_MIN_HALF_WIDTH = 8
DISK_ALIAS_KSIZE = (3, 5)
#: ``motion_blur``: (radius, sigma) of the one-sided Gaussian along the motion, kernel width 2 * radius + 1
#: (imagecorruptions ``motion_blur``, ``_motion_blur``, ``getOptimalKernelWidth1D``).
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))
#: ``motion_blur``: the motion's angle in degrees is uniform in this range, per image (imagecorruptions
#: ``motion_blur``).
MOTION_BLUR_ANGLE = (-45.0, 45.0)
#: ``brightness``: added to the HSV value channel, clipped to [0, 1] (imagecorruptions ``brightness``).
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)
#: ``contrast``: factor on each channel's deviation from its image mean (imagecorruptions ``contrast``).
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)
#: ``pixelate``: the image is box-downsampled to ``int(size * c)`` and upsampled back (imagecorruptions
#: ``pixelate``).
PIXELATE_FACTOR = (0.6, 0.5, 0.4, 0.3, 0.25)
#: ``jpeg_compression``: PIL JPEG quality (imagecorruptions ``jpeg_compression``).
JPEG_QUALITY = (25, 18, 15, 10, 7)


def _check(images: Tensor, severity: int) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be one of 0..5, got {severity}")


def _per_image(
    generator: Generators, images: Tensor, draw: Callable[[Tensor, torch.Generator | None], Tensor]
) -> Tensor:
    """``draw(images, generator)`` for the batch, or image by image with one generator each."""
    if generator is None or isinstance(generator, torch.Generator):
        return draw(images, generator)
    generators = list(generator)
    if len(generators) != len(images):
        raise ValueError(f"{len(generators)} generators for {len(images)} images")
    return torch.cat([draw(images[i : i + 1], g) for i, g in enumerate(generators)])


def _device(generator: torch.Generator | None, images: Tensor) -> torch.device:
    return images.device if generator is None else generator.device


def gaussian_noise(images: Tensor, severity: int, generator: Generators = None) -> Tensor:
    """``clip(x + N(0, c^2))`` per pixel and channel (imagecorruptions ``gaussian_noise``)."""
    _check(images, severity)
    if severity == 0:
        return images
    std = GAUSSIAN_NOISE_STD[severity - 1]

    def draw(x: Tensor, g: torch.Generator | None) -> Tensor:
        noise = torch.randn(x.shape, generator=g, device=_device(g, x), dtype=x.dtype).to(x.device)
        return x + std * noise

    return _per_image(generator, images, draw).clamp(0, 1)


def shot_noise(images: Tensor, severity: int, generator: Generators = None) -> Tensor:
    """``clip(Poisson(x * c) / c)`` per pixel and channel (imagecorruptions ``shot_noise``)."""
    _check(images, severity)
    if severity == 0:
        return images
    photons = SHOT_NOISE_PHOTONS[severity - 1]

    def draw(x: Tensor, g: torch.Generator | None) -> Tensor:
        return torch.poisson((x * photons).to(_device(g, x)), generator=g).to(x.device)

    return (_per_image(generator, images, draw) / photons).clamp(0, 1)


def _gaussian_kernel_1d(size: int, sigma: float) -> Tensor:
    """OpenCV's ``getGaussianKernel(size, sigma)`` (sigma > 0): normalised ``exp(-d^2 / (2 sigma^2))``."""
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(d**2) / (2 * sigma**2))
    return k / k.sum()


def disk_kernel(radius: int, alias_blur: float) -> Tensor:
    """The defocus kernel (imagecorruptions ``disk``): a normalised disk, anti-aliased by a small Gaussian.

    Returns float64 ``[k, k]``, ``k = 2 * max(radius, 8) + 1``. The Gaussian is applied as OpenCV's
    ``GaussianBlur`` does, with its default border (reflect-101).
    """
    half = max(radius, DISK_MIN_HALF_WIDTH)
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    ksize = DISK_ALIAS_KSIZE[0] if radius <= DISK_MIN_HALF_WIDTH else DISK_ALIAS_KSIZE[1]
    g = _gaussian_kernel_1d(ksize, alias_blur)
    padded = F.pad(disk[None, None], (ksize // 2,) * 4, mode="reflect")
    blurred = F.conv2d(F.conv2d(padded, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    return blurred[0, 0]


def _reflect101_index(n: int, pad: int) -> Tensor:
    """Source index of each of ``n + 2 * pad`` positions under OpenCV's ``BORDER_REFLECT_101``, any ``pad``."""
    if n == 1:
        return torch.zeros(n + 2 * pad, dtype=torch.long)
    period = 2 * (n - 1)
    i = torch.arange(-pad, n + pad).abs() % period
    return torch.where(i < n, i, period - i)


def reflect101(images: Tensor, pad: int) -> Tensor:
    """``images`` padded by ``pad`` on each side, reflect-101 as OpenCV, also where ``pad`` reaches past the image
    (where torch's ``reflect`` padding refuses: small images under large kernels)."""
    h, w = images.shape[-2:]
    if pad < min(h, w):
        return F.pad(images, (pad,) * 4, mode="reflect")
    rows, cols = _reflect101_index(h, pad).to(images.device), _reflect101_index(w, pad).to(images.device)
    return images[..., rows, :][..., cols]


def defocus_blur(images: Tensor, severity: int, generator: Generators = None) -> Tensor:
    """Each channel filtered with :func:`disk_kernel`, reflect-101 border as OpenCV's ``filter2D``
    (imagecorruptions ``defocus_blur``).

    Computed by FFT (4-10x faster than a direct convolution with these 17 x 17 and 21 x 21 kernels on a CPU);
    the kernel is symmetric, so its convolution equals ``filter2D``'s correlation.
    """
    _check(images, severity)
    if severity == 0:
        return images
    kernel = disk_kernel(*DEFOCUS_BLUR[severity - 1]).to(images)
    h, w = images.shape[-2:]
    pad = kernel.shape[0] // 2
    padded = reflect101(images, pad)
    size = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded) * torch.fft.rfft2(kernel, s=size)
    # circular convolution of the padded image: the window past the kernel's wrap-around is the linear one
    blurred = torch.fft.irfft2(spectrum, s=size)[..., 2 * pad : 2 * pad + h, 2 * pad : 2 * pad + w]
    return blurred.clamp(0, 1)


def motion_blur_at(images: Tensor, radius: int, sigma: float, angles: Tensor) -> Tensor:
    """Motion blur of each image along its own angle (degrees, ``[B]``) (imagecorruptions ``_motion_blur``).

    ``sum_i k_i * shift(x, i * (cos a, sin a))`` over ``i < 2 * radius + 1``, with ``k_i`` the normalised
    one-sided Gaussian ``exp(-i^2 / (2 sigma^2))``, shifts rounded as the reference rounds them
    (``-ceil(i * sin a - 0.5)`` rows, ``-ceil(i * cos a - 0.5)`` columns) and the image's edge replicated into
    the vacated border. As in the reference, an image's taps stop at its first shift as long as the image (the
    weights are not renormalised then). Vectorised over images and pixels; one gather per tap.
    """
    b, c, h, w = images.shape
    width = 2 * radius + 1
    taps = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).tolist()
    rad = torch.deg2rad(angles.to("cpu", torch.float64))
    point_y, point_x = width * torch.sin(rad), width * torch.cos(rad)
    hypot = torch.hypot(point_y, point_x)
    # [width, B] shifts, in the reference's order of operations so that its rounding is ours
    dy = -torch.ceil(taps[:, None] * point_y / hypot - 0.5).long()
    dx = -torch.ceil(taps[:, None] * point_x / hypot - 0.5).long()
    # an image's taps stop at its first shift that leaves the image
    inside = ((dy.abs() < h) & (dx.abs() < w)).long().cumprod(dim=0).bool()
    used = int(inside.any(dim=1).sum())
    device = images.device
    dy, dx, inside = dy[:used].to(device), dx[:used].to(device), inside[:used].to(device)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    flat = images.reshape(b, c, h * w)
    out = torch.zeros_like(flat)
    for i in range(used):
        src_rows = (rows[None, :] - dy[i, :, None]).clamp(0, h - 1)  # [B, H]
        src_cols = (cols[None, :] - dx[i, :, None]).clamp(0, w - 1)  # [B, W]
        index = (src_rows[:, :, None] * w + src_cols[:, None, :]).reshape(b, 1, h * w)
        weight = (inside[i].to(images.dtype) * weights[i]).view(b, 1, 1)
        out += weight * flat.gather(2, index.expand(b, c, h * w))
    return out.reshape(b, c, h, w).clamp(0, 1)


def motion_blur(images: Tensor, severity: int, generator: Generators = None) -> Tensor:
    """Motion blur along a uniformly random angle per image (imagecorruptions ``motion_blur``); see
    :func:`motion_blur_at`."""
    _check(images, severity)
    if severity == 0:
        return images
    low, high = MOTION_BLUR_ANGLE

    def draw(x: Tensor, g: torch.Generator | None) -> Tensor:
        u = torch.rand(len(x), generator=g, device=_device(g, x), dtype=torch.float64)
        return low + (high - low) * u.cpu()

    angles = _per_image(generator, images, draw)
    return motion_blur_at(images, *MOTION_BLUR[severity - 1], angles)


def brightness(images: Tensor, severity: int, generator: Generators = None) -> Tensor:
    """Add c to the HSV value, clipped to 1 (imagecorruptions ``brightness``, through skimage's HSV).

    With hue and saturation fixed, RGB is proportional to the value ``V = max(R, G, B)``, so the HSV round
    trip is ``x * V' / V`` with ``V' = min(V + c, 1)``; a black pixel (V = 0, saturation 0 in skimage) becomes
    grey V'.
    """
    _check(images, severity)
    if severity == 0:
        return images
    value = images.amax(dim=1, keepdim=True)
    new_value = (value + BRIGHTNESS_SHIFT[severity - 1]).clamp(max=1)
    scaled = images * (new_value / value.clamp(min=torch.finfo(images.dtype).tiny))
    return torch.where(value > 0, scaled, new_value).clamp(0, 1)


def contrast(images: Tensor, severity: int, generator: Generators = None) -> Tensor:
    """``clip((x - m) * c + m)`` with m each channel's mean over the image (imagecorruptions ``contrast``)."""
    _check(images, severity)
    if severity == 0:
        return images
    means = images.mean(dim=(2, 3), keepdim=True)
    return ((images - means) * CONTRAST_FACTOR[severity - 1] + means).clamp(0, 1)


def pil_box_weights(in_size: int, out_size: int) -> Tensor:
    """``[out, in]`` float64 weights of PIL's BOX resampling (Pillow ``Resample.c``, ``precompute_coeffs``).

    Output pixel j averages the input pixels whose centres lie in
    ``(centre - scale / 2, centre + scale / 2]``, ``centre = (j + 0.5) * scale``, ``scale = in / out``,
    within PIL's rounded bounds.
    """
    scale = in_size / out_size
    support = 0.5 * max(scale, 1.0)
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    low = (centre - support + 0.5).floor().clamp(min=0)
    high = (centre + support + 0.5).floor().clamp(max=in_size)
    pixel = torch.arange(in_size, dtype=torch.float64)
    t = (pixel[None, :] - centre[:, None] + 0.5) / max(scale, 1.0)
    inside = (pixel[None, :] >= low[:, None]) & (pixel[None, :] < high[:, None]) & (t > -0.5) & (t <= 0.5)
    weights = inside.to(torch.float64)
    return weights / weights.sum(dim=1, keepdim=True)


def pil_nearest_index(in_size: int, out_size: int) -> Tensor:
    """Source index of each output pixel in PIL's NEAREST resize: ``floor((j + 0.5) * in / out)``."""
    return ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size)).floor().long()


def pixelate(images: Tensor, severity: int, generator: Generators = None) -> Tensor:
    """Box-downsample to ``int(size * c)`` (PIL BOX), then upsample to the size (PIL NEAREST)
    (imagecorruptions ``pixelate``); separable, as matrix products."""
    _check(images, severity)
    if severity == 0:
        return images
    factor = PIXELATE_FACTOR[severity - 1]
    h, w = images.shape[-2:]
    small_h, small_w = int(h * factor), int(w * factor)
    down_h = pil_box_weights(h, small_h).to(images)
    down_w = pil_box_weights(w, small_w).to(images)
    small = down_h @ images @ down_w.T
    rows = pil_nearest_index(small_h, h).to(images.device)
    cols = pil_nearest_index(small_w, w).to(images.device)
    return small.index_select(2, rows).index_select(3, cols).clamp(0, 1)


def jpeg_compression(images: Tensor, severity: int, generator: Generators = None) -> Tensor:
    """PIL JPEG encode and decode at quality c (imagecorruptions ``jpeg_compression``), image by image on the
    CPU.

    The codec needs 8-bit input: images are rounded to multiples of 1/255 first.
    """
    _check(images, severity)
    if severity == 0:
        return images
    quality = JPEG_QUALITY[severity - 1]
    pixels = (images.detach() * 255).round().clamp(0, 255).to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return out.to(images.device, images.dtype) / 255


#: Name -> corruption, in ImageNet-C's order (noise, blur, weather, digital); imagecorruptions' names.
CORRUPTIONS: dict[str, Callable[[Tensor, int, Generators], Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "brightness": brightness,
    "contrast": contrast,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
#: The corruptions that draw random numbers (from ``generator``).
RANDOM_CORRUPTIONS = frozenset({"gaussian_noise", "shot_noise", "motion_blur"})

_CORRUPTION_STREAM = 4  # noise streams (see protobench.metrics.adversarial.uniform_noise)


def image_generators(seed: int, name: str, severity: int, indices: Tensor) -> list[torch.Generator]:
    """One CPU generator per image for corruption ``name`` at ``severity``.

    Image i's generator is seeded from ``(seed, name, severity, indices[i])`` (mixed by numpy's SeedSequence),
    so its draw depends neither on batching nor on sharding, nor on the device.
    """
    stream = (_CORRUPTION_STREAM, zlib.crc32(name.encode()), severity)
    states = [np.random.SeedSequence([seed, *stream, int(i)]).generate_state(1)[0] for i in indices.tolist()]
    return [torch.Generator().manual_seed(int(state)) for state in states]

