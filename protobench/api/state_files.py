"""Reading a state dict from a file someone else wrote, without ever unpickling an object.

``.safetensors`` files are read with safetensors; ``.pth``/``.pt`` files with ``torch.load(weights_only=True)``,
which admits tensors and plain containers only. Every failure is one line naming the file and saying what to do.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

#: Training scripts' usual wrappers around a state dict.
WRAPPERS = ("state_dict", "model_state_dict", "model")


class StateFileError(ValueError):
    """A weights or checkpoint file that cannot be read safely, or holds no state dict."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_state_dict(path: str | Path, what: str = "weights file") -> dict[str, Tensor]:
    """The tensors of ``path`` by name (unwrapping :data:`WRAPPERS`); ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"{what} {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise StateFileError(f"{what} {path} is not a readable safetensors file (truncated, or another format): "
                                 f"{_first_line(exc)}") from exc
    if path.suffix not in {".pth", ".pt"}:
        raise StateFileError(f"{what} {path}: unknown format (use .safetensors, .pth or .pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # anything beyond tensors and containers: a model object, or worse
        raise StateFileError(
            f"{what} {path} holds pickled Python objects, not only tensors (a whole model saved with "
            "torch.save(model), as the official ProtoPNet, ProtoTree and ProtoViT code does), and protobench never unpickles "
            "them (weights_only=True); where you trust the file, export its state dict with "
            f"torch.save(torch.load('{path}', weights_only=False).state_dict(), 'state_dict.pth')") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise StateFileError(f"{what} {path} is not a readable PyTorch file (truncated?): {_first_line(exc)}") from exc
    for wrapper in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise StateFileError(f"{what} {path} holds a {type(state).__name__} that is not a state dict of tensors")
    return state
