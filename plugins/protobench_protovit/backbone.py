"""ProtoViT's backbone: a timm ViT whose patch tokens, minus the cls token, form the latent grid.

Ma et al., NeurIPS 2024, Sec. 3 (feature encoder): the feature of patch ``i`` is ``z_i = f(x)_i - f(x)_cls``
(official ``model.py``, ``conv_features``: ``x[:, 1:] - x[:, 0]`` after the final norm, reshaped row-major to
``[B, D, h, w]``; no add-on layers). For DeiT the tokens are timm's ``VisionTransformer.forward_features``
(patch embedding, cls token, position embedding, blocks, norm: the official ``deit`` branch); for CaiT
timm's ``Cait.forward_features`` runs the class-attention blocks before the final norm, as the official
``cait`` branch does.

The quick profile's small ViT (:data:`QUICK_VITS`) is registered in timm's registry as a :class:`GridViT`,
whose ``forward_features`` already returns the grid ``[B, D, h, w]``: the feature-map layout the shared
stand-in pretraining (:mod:`protobench.runner.standin`, global average pooling) expects, so
``weights = "synthbirds-standin"`` works with it; the quick profile trains from scratch instead (see
:mod:`.plugin`). Its state dict has timm's ``VisionTransformer`` key layout.

Weights never download: ``pretrained=False`` always; a local state-dict file (timm key layout; a classifier
head in it is ignored) may be named.
"""

from __future__ import annotations

from pathlib import Path

import timm
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from protobench.api.state_files import read_state_dict

#: The quick profile's ViTs at 64 px: name -> VisionTransformer arguments (patch 8: an 8x8 latent grid).
QUICK_VITS: dict[str, dict[str, int]] = {
    "protovit_micro_patch8_64": {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4,
                                 "num_heads": 3},
}


def token_grid(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, 1 + h*w, D]`` tokens (cls first) -> ``[B, D, h, w]`` of ``patch - cls``, row-major."""
    patches = tokens[:, 1:] - tokens[:, :1]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def grid_size(vit: nn.Module) -> tuple[int, int]:
    """The latent grid ``(h, w)`` of a timm ViT / CaiT (its patch embedding's grid)."""
    return tuple(int(s) for s in vit.patch_embed.grid_size)  # type: ignore[return-value]


class GridViT(VisionTransformer):
    """A timm ``VisionTransformer`` whose ``forward_features`` returns the latent grid ``[B, D, h, w]``."""

    def forward_features(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        return token_grid(super().forward_features(x), grid_size(self))


def _register(name: str, arguments: dict[str, int]) -> None:
    def build(pretrained: bool = False, **kwargs: object) -> GridViT:
        if pretrained:
            raise ValueError(f"{name} has no published weights: name a local weights file instead")
        ignored = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
        kwargs = {k: v for k, v in kwargs.items() if k not in ignored}
        return GridViT(**{**arguments, **kwargs})

    build.__name__ = name
    register_model(build)


for _name, _arguments in QUICK_VITS.items():
    if not timm.is_model(_name):
        _register(_name, _arguments)


def build_vit(name: str, weights: str | None, drop_path: float) -> nn.Module:
    """The timm ViT ``name`` without a head, with stochastic depth ``drop_path``, optionally from ``weights``.

    The official ``tools/deit_features.py`` / ``tools/cait_features.py`` build the backbone with
    ``drop_path_rate=0.1``; timm spreads it over the blocks as those files' ``create_model`` calls do.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown backbone {name!r}: not a timm model name")
    model = timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path)
    if not hasattr(model, "patch_embed") or not hasattr(model, "cls_token"):
        raise ValueError(f"backbone {name!r} is not a ViT with a cls token (ProtoViT needs DeiT/CaiT tokens)")
    if weights is not None:
        state = read_state_dict(Path(weights), f"weights file of backbone {name!r}")
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            missing, unexpected = sorted(result.missing_keys)[:8], sorted(result.unexpected_keys)[:8]
            raise ValueError(f"weights file {weights} does not fit backbone {name!r}: missing {missing}, "
                             f"unexpected {unexpected}")
    return model


def latent_grid(vit: nn.Module, x: Tensor) -> Tensor:
    """The latent grid ``[B, D, h, w]`` of normalised images ``x`` (a :class:`GridViT` gives it directly)."""
    out = vit.forward_features(x)
    return out if out.dim() == 4 else token_grid(out, grid_size(vit))
