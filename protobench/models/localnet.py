"""LocalNet: a small CNN whose receptive field is bounded, registered in timm's model registry.

A BagNet-like design (Brendel and Bethge, "Approximating CNNs with Bag-of-local-Features models works
surprisingly well on ImageNet", ICLR 2019): spatial (3x3) convolutions only in the first stages, then
residual blocks of 1x1 convolutions that add capacity without widening the receptive field. A cell of
the latent grid therefore describes what lies in and near it, which is what the papers' prototype
networks inherit from ImageNet weights and what a from-scratch classifier with a whole-image receptive
field does not give (see DESIGN.md, "Quick-profile geometry").

``localnet_rf19`` (output stride 8, receptive field 19 px) and ``localnet_rf27`` (27 px) are built by
``timm.create_model`` like any timm model, ``pretrained=False`` only.
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from torch import Tensor, nn


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class PointwiseBlock(nn.Module):
    """``relu(x + bn(conv1x1(relu(bn(conv1x1(x))))))``: capacity at a fixed receptive field."""

    def __init__(self, channels: int, expansion: int = 2):
        super().__init__()
        hidden = channels * expansion
        self.body = nn.Sequential(_conv(channels, hidden, 1), nn.Conv2d(hidden, channels, 1, bias=False),
                                  nn.BatchNorm2d(channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


#: Receptive field (px) -> (kernel of the stride-4 conv, 3x3 convs added at stride 8).
LAYOUTS = {19: (1, 0), 27: (3, 0), 43: (3, 1)}


class LocalNet(nn.Module):
    """Stride-8 features with a receptive field of ``receptive_field`` pixels (a key of :data:`LAYOUTS`).

    Layout (kernel/stride): 3/2 (32), 3/1 (64), 3/2 (128), k/1 (128), 3/2 (``width``), then ``extra``
    3/1 convs, then ``blocks`` :class:`PointwiseBlock`; ``(k, extra)`` is ``LAYOUTS[receptive_field]``. The
    output is multiplied by ``output_scale``, so that the features a family's add-on layers first see are
    small, as a freshly initialised timm ResNet's are (its last BN in each block starts at 0). On the
    stand-in's unscaled features (std 3, max 65), ProtoPNet's warm-up at the paper's learning rates collapsed
    every latent patch to one point within an epoch (24-class synthbirds: 4% accuracy after 3 epochs, against
    43% with the features scaled by 0.005). Heads on pooled features divide the scale out again
    (:class:`protobench.models.backbones.PooledHead`), so it does not slow a classifier.
    """

    def __init__(self, receptive_field: int = 19, width: int = 256, blocks: int = 3, num_classes: int = 1000,
                 in_chans: int = 3, output_stride: int | None = None, output_scale: float = 0.005, **_: Any):
        super().__init__()
        if output_stride not in (None, 8):
            raise TypeError(f"LocalNet has output stride 8 only, got output_stride={output_stride}")
        if receptive_field not in LAYOUTS:
            raise ValueError(f"receptive_field must be one of {sorted(LAYOUTS)}, got {receptive_field}")
        k, extra = LAYOUTS[receptive_field]
        self.stem = nn.Sequential(_conv(in_chans, 32, 3, 2), _conv(32, 64, 3), _conv(64, 128, 3, 2),
                                  _conv(128, 128, k), _conv(128, width, 3, 2),
                                  *(_conv(width, width, 3) for _ in range(extra)))
        self.blocks = nn.Sequential(*(PointwiseBlock(width) for _ in range(blocks)))
        self.output_scale = output_scale
        self.num_features = width
        self.head = nn.Linear(width, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x)) * self.output_scale

    def reset_classifier(self, num_classes: int, global_pool: str = "") -> None:
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


@register_model
def localnet_rf19(pretrained: bool = False, **kwargs: Any) -> LocalNet:
    """LocalNet with a 19-px receptive field (no weights: ``pretrained`` must be False)."""
    if pretrained:
        raise ValueError("localnet has no published weights")
    return LocalNet(receptive_field=19, **kwargs)


@register_model
def localnet_rf27(pretrained: bool = False, **kwargs: Any) -> LocalNet:
    """LocalNet with a 27-px receptive field (no weights: ``pretrained`` must be False)."""
    if pretrained:
        raise ValueError("localnet has no published weights")
    return LocalNet(receptive_field=27, **kwargs)


@register_model
def localnet_rf43(pretrained: bool = False, **kwargs: Any) -> LocalNet:
    """LocalNet with a 43-px receptive field (no weights: ``pretrained`` must be False)."""
    if pretrained:
        raise ValueError("localnet has no published weights")
    return LocalNet(receptive_field=43, **kwargs)
