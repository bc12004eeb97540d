"""Convolutional backbones from timm, never downloaded, and the ImageNet normalisation models use.

:func:`build_backbone` builds any timm model with ``pretrained=False``, drops its classifier
head and returns a module mapping normalised images ``[B, 3, H, W]`` to the last feature map
``[B, C, h, w]``. Pretrained weights come only from a local file the user names: safetensors, or a
pickled ``.pth``/``.pt`` state dict read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from protobench.api.state_files import read_state_dict
from protobench.models import localnet  # noqa: F401  (registers the localnet_* backbones in timm's registry)


class BackboneError(ValueError):
    """An unknown backbone name, or a weights file that is missing or does not fit."""


class ImageNetNormalize(nn.Module):
    """Map ``[0, 1]`` pixel-space images to ImageNet-normalised inputs (no saved state)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class TimmFeatures(nn.Module):
    """A headless timm model whose forward is its ``forward_features``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)


def feature_scale(features: nn.Module) -> float:
    """The constant a backbone multiplies its features by (``output_scale``, e.g. LocalNet's; else 1)."""
    return float(getattr(getattr(features, "model", features), "output_scale", 1.0))


class PooledHead(nn.Module):
    """``linear(mean_hw(features) / scale)``: a linear classifier on globally average-pooled features.

    ``scale`` undoes a backbone's constant output scale (:func:`feature_scale`), so that the head learns at
    its usual rate on a backbone whose features are made small for the families' add-on layers
    (:mod:`protobench.models.localnet`).
    """

    def __init__(self, channels: int, num_classes: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features.mean(dim=(2, 3)) / self.scale)


class BackboneClassifier(nn.Module):
    """``head(backbone(normalize(x)))`` with a :class:`PooledHead`: a backbone trained as a plain classifier.

    The stand-in pretraining (:mod:`protobench.runner.standin`) uses it; ``backbone`` and ``normalize`` are
    shared, not copied.
    """

    def __init__(self, normalize: nn.Module, backbone: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.head = PooledHead(channels, num_classes, feature_scale(backbone))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(self.normalize(x)))


def build_backbone(name: str, weights: str | None = None, *, output_stride: int | None = None) -> tuple[nn.Module, int]:
    """The timm model ``name`` without its head, and its number of output channels.

    ``weights`` is a local state-dict file in timm's key layout (a classifier head in it is
    ignored). ``output_stride`` (8, 16 or 32, where the model supports it) trades pooling for
    dilation to enlarge the latent grid.
    """
    if not timm.is_model(name):
        raise BackboneError(f"unknown backbone {name!r}: not a timm model name (see timm.list_models())")
    kwargs = {} if output_stride is None else {"output_stride": output_stride}
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:  # timm's VGG asserts output_stride == 32
        reason = str(exc) or "timm builds it at its native stride only"
        raise BackboneError(f"backbone {name!r} does not accept output_stride={output_stride}: {reason}") from exc
    full_keys = set(model.state_dict())
    if hasattr(model, "prune_intermediate_layers"):
        model.prune_intermediate_layers(prune_head=True, prune_norm=False)
    else:
        model.reset_classifier(0, "")
    if weights is not None:
        _load_weights(model, name, Path(weights), head_keys=full_keys - set(model.state_dict()))
    return TimmFeatures(model), int(model.num_features)


def _load_weights(model: nn.Module, name: str, path: Path, head_keys: set[str]) -> None:
    state = read_state_dict(path, f"weights file of backbone {name!r}")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise BackboneError(f"weights file {path} does not fit backbone {name!r}: {exc}") from exc
    unexpected = sorted(set(result.unexpected_keys) - head_keys)
    if result.missing_keys or unexpected:
        raise BackboneError(
            f"weights file {path} does not fit backbone {name!r}: "
            f"missing keys {sorted(result.missing_keys)[:8]} ({len(result.missing_keys)}), "
            f"unexpected keys {unexpected[:8]} ({len(unexpected)})"
        )


def configure(model: nn.Module, config: dict[str, Any]) -> None:
    """Set what every family's model takes alike from its config: ``config`` (a copy), ``num_classes``, a
    square ``input_size`` and the :class:`ImageNetNormalize` layer its ``[0, 1]`` inputs go through."""
    model.config = dict(config)
    model.num_classes = int(config["num_classes"])
    model.input_size = (int(config["input_size"]),) * 2
    model.normalize = ImageNetNormalize()


def configured_backbone(config: dict[str, Any]) -> tuple[nn.Module, int]:
    """:func:`build_backbone` from a model config's ``backbone``, ``weights`` and ``output_stride``."""
    return build_backbone(config["backbone"], config.get("weights"), output_stride=config.get("output_stride"))
