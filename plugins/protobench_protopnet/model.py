"""The ProtoPNet architecture (Chen et al., NeurIPS 2019, Sec. 2.1, Fig. 2).

Backbone ``f`` (any timm CNN) -> add-on 1x1 convolutions ending in a Sigmoid -> latent grid
``z`` of depth D -> prototype layer ``g_p`` (squared L2 distances of every latent patch to every
1x1 prototype, turned into similarities log((d + 1) / (d + eps)) and max-pooled over the grid)
-> last layer ``h`` without bias. Parameter names follow the official code (``features``,
``add_on_layers``, ``prototype_vectors``, ``last_layer``).

Departures from the official code: the backbone comes from timm and is never downloaded
(pretrained weights only from a local file); the model takes ``[0, 1]`` images and normalises
them itself; the distances are always computed in float32, outside autocast, since the
expansion ``||z||^2 - 2 z.p + ||p||^2`` cancels badly in half precision; prototypes are 1x1
(the paper's shape; the official code's larger prototype kernels are not offered), so the
official all-ones convolution for ``||z||^2`` is a channel sum.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from protobench.api.contract import Explanation, PrototypeModel
from protobench.models.backbones import configure, configured_backbone

#: The official code's epsilon in the log similarity.
EPSILON = 1e-4


def add_on_layers(in_channels: int, depth: int, kind: str) -> nn.Sequential:
    """The official add-on layers between the backbone and the prototype layer.

    ``"regular"``: conv1x1(C -> D), ReLU, conv1x1(D -> D), Sigmoid (the official settings.py).
    ``"bottleneck"``: pairs of 1x1 convs halving the channels down to D, ReLU between them and a
    final Sigmoid (the official model.py default). Weights: Kaiming normal (fan_out), zero bias.
    """
    if kind == "regular":
        layers: list[nn.Module] = [nn.Conv2d(in_channels, depth, 1), nn.ReLU(), nn.Conv2d(depth, depth, 1), nn.Sigmoid()]
    elif kind == "bottleneck":
        layers, current = [], in_channels
        while current > depth or not layers:
            out = max(depth, current // 2)
            layers += [nn.Conv2d(current, out, 1), nn.ReLU(), nn.Conv2d(out, out, 1)]
            layers.append(nn.ReLU() if out > depth else nn.Sigmoid())
            current //= 2
    else:
        raise ValueError(f"unknown add_on_layers {kind!r}: use 'regular' or 'bottleneck'")
    return kaiming_sequential(layers)


def kaiming_sequential(layers: list[nn.Module]) -> nn.Sequential:
    """``layers`` in sequence, each convolution initialised as the official code does (Kaiming normal
    fan_out, zero bias)."""
    for m in layers:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


def squared_l2_distances(z: Tensor, prototypes: Tensor) -> Tensor:
    """``||z_hw - p_j||^2`` for every latent patch and 1x1 prototype: ``[B, P, h, w]``.

    Computed as ``||z||^2 - 2 z.p + ||p||^2`` with a convolution and clamped at 0 (ReLU), as in
    the official ``_l2_convolution``.
    """
    z2 = (z**2).sum(dim=1, keepdim=True)
    p2 = (prototypes**2).sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
    return F.relu(z2 - 2 * F.conv2d(z, prototypes) + p2)


def log_similarity(distances: Tensor, eps: float = EPSILON) -> Tensor:
    """The prototype activation of Sec. 2.1: ``log((d + 1) / (d + eps))``."""
    return torch.log((distances + 1) / (distances + eps))


def last_layer_init(prototype_classes: Tensor, num_classes: int, incorrect_strength: float = -0.5) -> Tensor:
    """Last-layer weights ``[C, P]``: 1 for the prototype's own class, ``incorrect_strength`` elsewhere (Sec. 2.2)."""
    own = F.one_hot(prototype_classes, num_classes).T.float()
    return own + incorrect_strength * (1 - own)


class ProtoPNet(PrototypeModel):
    """ProtoPNet with ``prototypes_per_class`` 1x1 prototypes of depth ``prototype_dim`` per class."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        configure(self, config)
        depth = int(config["prototype_dim"])
        num_prototypes = self.num_classes * int(config["prototypes_per_class"])
        self.features, channels = configured_backbone(config)
        self.add_on_layers = add_on_layers(channels, depth, config["add_on_layers"])
        self.prototype_vectors = nn.Parameter(torch.rand(num_prototypes, depth, 1, 1))
        self.register_buffer("prototype_classes",
                             torch.arange(num_prototypes) // int(config["prototypes_per_class"]))
        self.register_buffer("prototype_sources", torch.full((num_prototypes, 3), -1, dtype=torch.long))
        self.last_layer = nn.Linear(num_prototypes, self.num_classes, bias=False)
        with torch.no_grad():
            self.last_layer.weight.copy_(last_layer_init(self.prototype_classes, self.num_classes))

    @property
    def max_distance(self) -> float:
        """The largest squared distance between latent patches in ``[0, 1]^D`` (the official ``max_dist``)."""
        return float(self.prototype_vectors[0].numel())

    def latent(self, x: Tensor) -> Tensor:
        """The latent grid ``z = add_on(f(x))`` of ``[0, 1]`` images: ``[B, D, h, w]``."""
        return self.add_on_layers(self.features(self.normalize(x)))

    def distances(self, z: Tensor) -> Tensor:
        """Squared L2 distances ``[B, P, h, w]`` of the latent grid to every prototype, in float32."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return squared_l2_distances(z.float(), self.prototype_vectors.float())

    def logits_and_min_distances(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[B, C]``, min-pooled distances ``[B, P]`` and the full distances ``[B, P, h, w]``."""
        distances = self.distances(self.latent(x))
        min_distances = distances.flatten(2).min(dim=2).values
        logits = self.last_layer(log_similarity(min_distances))
        return logits, min_distances, distances

    def explain(self, x: Tensor) -> Explanation:
        logits, min_distances, distances = self.logits_and_min_distances(x)
        activations = log_similarity(min_distances)
        contributions = activations[:, :, None] * self.last_layer.weight.T[None]
        return Explanation(logits=logits, similarities=log_similarity(distances), contributions=contributions,
                           extra={"min_distances": min_distances})

    def forward(self, x: Tensor) -> Tensor:
        return self.logits_and_min_distances(x)[0]
