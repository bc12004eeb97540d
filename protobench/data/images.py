"""Reading an image file into a float tensor, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


class ImageReadError(ValueError):
    """An image file that is missing, truncated or not an image."""


def read_image(path: str | Path) -> torch.Tensor:
    """``[3, H, W]`` float in ``[0, 1]`` (RGB) from an image file, fully decoded."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise ImageReadError(f"image {path} does not exist") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageReadError(f"image {path} is unreadable (corrupt or truncated?): {exc}") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
