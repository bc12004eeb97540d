"""The ST-ProtoPNet architecture (Wang, Liu, Chen, Tian, Carneiro, "Learning Support and Trivial Prototypes
for Interpretable Image Classification", ICCV 2023, Sec. 3; official code cwangrun/ST-ProtoPNet, commit
935aaa1, ``full/model.py`` and ``cropped/model.py``).

One backbone ``f`` feeds two branches, ``trivial`` and ``support``. Each branch has its own add-on layers,
its own prototypes (``prototypes_per_class`` per class, 1x1 of depth ``prototype_dim``, initialised uniform
in [0, 1) as ``torch.rand``) and its own bias-free last layer (+1 own class, -0.5 others). The prediction is
the sum of the two heads' logits, in training and testing.

``variant="full"`` (whole images, the paper's CUB setting; the default): add-on layers are a 2x bilinear
upsampling (identity for VGG backbones), conv1x1(C -> D) and conv1x1(D -> D), no activation; the similarity
of a latent cell to a prototype is the cosine of the two, through a ReLU; each branch's activations are its
maps max-pooled over the grid, and both its logits and its losses use them.
``variant="cropped"``: add-on layers conv1x1, Tanh, conv1x1, Tanh (no upsampling); logits use the
TesNet-style projection ``<z, p / ||p||>`` (no ReLU), the losses the cosine (no ReLU).

Parameter names group the branches under ProtoPNet's (``add_on_layers.trivial``,
``prototype_vectors.trivial``, ``last_layer.trivial``, ...), so ProtoPNet's stages train them alike.
Prototype ``j`` of a branch belongs to class ``j // prototypes_per_class``; the model's prototypes are the
trivial branch's followed by the support branch's.

Departures from the official code: the backbone comes from timm and is never downloaded (pretrained weights
only from a local file); for a VGG backbone the final max-pool is removed, as the official ``full/``
``vgg_features(final_maxpool=False)`` does (so VGG-19 gives 14x14 at 224 px); the model takes ``[0, 1]``
images and normalises them itself; the official unused ``ones`` parameter is not kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from protobench_protopnet.model import kaiming_sequential
from torch import Tensor, nn

from protobench.api.contract import Explanation, PrototypeModel
from protobench.models.backbones import configure, configured_backbone

BRANCHES = ("trivial", "support")
VARIANTS = ("full", "cropped")


def is_vgg(backbone: str) -> bool:
    """The official test for an upsampling-free backbone (``'VGG' in str(features).upper()``), by name."""
    return backbone.lower().startswith("vgg")


def branch_add_on(in_channels: int, depth: int, variant: str, upsample: bool) -> nn.Sequential:
    """One branch's add-on layers (see the module doc); Kaiming normal (fan_out) weights, zero bias."""
    if variant == "full":
        layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="bilinear")] if upsample else []
        layers += [nn.Conv2d(in_channels, depth, 1), nn.Conv2d(depth, depth, 1)]
    elif variant == "cropped":
        layers = [nn.Conv2d(in_channels, depth, 1), nn.Tanh(), nn.Conv2d(depth, depth, 1), nn.Tanh()]
    else:
        raise ValueError(f"unknown ST-ProtoPNet variant {variant!r}: use one of {VARIANTS}")
    return kaiming_sequential(layers)


def cosine_maps(z: Tensor, prototypes: Tensor) -> Tensor:
    """``[B, P, h, w]``: cosine of every latent cell ``z [B, D, h, w]`` with every prototype ``[P, D, 1, 1]``."""
    return F.conv2d(F.normalize(z, dim=1), F.normalize(prototypes, dim=1))


def projection_maps(z: Tensor, prototypes: Tensor) -> Tensor:
    """``[B, P, h, w]``: the TesNet projection ``<z, p / ||p||>`` (``cropped/``'s logit similarity)."""
    return F.conv2d(z, F.normalize(prototypes, dim=1))


def last_layer_init(num_prototypes: int, prototypes_per_class: int, num_classes: int) -> Tensor:
    """``[C, P]``: +1 where prototype ``j`` belongs to class ``c``, -0.5 elsewhere (the official init)."""
    own = F.one_hot(torch.arange(num_prototypes) // prototypes_per_class, num_classes).T.float()
    return own - 0.5 * (1 - own)


@dataclass
class BranchPass:
    """One branch's forward pass: logit maps ``[B, P, h, w]``, their max over the grid (what the last layer
    weighs) ``[B, P]``, loss activations ``[B, P]`` (the same tensor in ``full``) and logits ``[B, C]``."""

    logit_maps: Tensor
    logit_activations: Tensor
    loss_activations: Tensor
    logits: Tensor


class STProtoPNet(PrototypeModel):
    """ST-ProtoPNet: a trivial and a support prototype branch on one backbone (see the module doc)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        configure(self, config)
        self.variant = str(config["variant"])
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown ST-ProtoPNet variant {self.variant!r}: use one of {VARIANTS}")
        per_class, depth = int(config["prototypes_per_class"]), int(config["prototype_dim"])
        per_branch = self.num_classes * per_class
        self.features, channels = configured_backbone(config)
        if is_vgg(config["backbone"]):
            drop_final_maxpool(self.features)
        upsample = not is_vgg(config["backbone"])
        self.add_on_layers = nn.ModuleDict(
            {b: branch_add_on(channels, depth, self.variant, upsample) for b in BRANCHES})
        self.prototype_vectors = nn.ParameterDict(
            {b: nn.Parameter(torch.rand(per_branch, depth, 1, 1)) for b in BRANCHES})
        self.last_layer = nn.ModuleDict({b: nn.Linear(per_branch, self.num_classes, bias=False) for b in BRANCHES})
        with torch.no_grad():
            for head in self.last_layer.values():
                head.weight.copy_(last_layer_init(per_branch, per_class, self.num_classes))
        branch_classes = torch.arange(per_branch) // per_class
        self.register_buffer("branch_classes", branch_classes, persistent=False)
        self.register_buffer("prototype_classes", branch_classes.repeat(len(BRANCHES)))
        self.register_buffer("prototype_sources", torch.full((len(BRANCHES) * per_branch, 3), -1, dtype=torch.long))

    @property
    def prototype_set(self) -> tuple[str, ...]:
        """Each prototype's branch, in the model's prototype order."""
        per_branch = len(self.branch_classes)
        return tuple(b for b in BRANCHES for _ in range(per_branch))

    def latent(self, x: Tensor) -> dict[str, Tensor]:
        """Each branch's latent grid ``[B, D, h, w]`` of ``[0, 1]`` images (before normalisation)."""
        f = self.features(self.normalize(x))
        return {b: self.add_on_layers[b](f) for b in BRANCHES}

    def branch_pass(self, branch: str, z: Tensor) -> BranchPass:
        """One branch's maps, loss activations and logits from its latent grid ``z``."""
        prototypes = self.prototype_vectors[branch].float()
        with torch.autocast(device_type=z.device.type, enabled=False):
            cosine = cosine_maps(z.float(), prototypes)
            if self.variant == "full":
                logit_maps = F.relu(cosine)
                logit_activations = loss_activations = logit_maps.flatten(2).max(dim=2).values
            else:
                logit_maps = projection_maps(z.float(), prototypes)
                logit_activations = logit_maps.flatten(2).max(dim=2).values
                loss_activations = cosine.flatten(2).max(dim=2).values
        logits = self.last_layer[branch](logit_activations)
        return BranchPass(logit_maps, logit_activations, loss_activations, logits)

    def branches(self, x: Tensor) -> dict[str, BranchPass]:
        """Both branches' passes on ``[0, 1]`` images."""
        return {b: self.branch_pass(b, z) for b, z in self.latent(x).items()}

    def explain(self, x: Tensor) -> Explanation:
        passes = self.branches(x)
        logits = sum(p.logits for p in passes.values())
        contributions = torch.cat(
            [p.logit_activations[:, :, None] * self.last_layer[b].weight.T[None] for b, p in passes.items()], dim=1)
        similarities = torch.cat([p.logit_maps for p in passes.values()], dim=1)
        return Explanation(logits=logits, similarities=similarities, contributions=contributions,
                           extra={"prototype_set": self.prototype_set})

    def forward(self, x: Tensor) -> Tensor:
        return sum(p.logits for p in self.branches(x).values())

    @torch.no_grad()
    def renormalise_prototypes(self) -> None:
        """Both prototype sets to unit L2 norm over channels (the official step after every optimiser step)."""
        for vectors in self.prototype_vectors.values():
            vectors.copy_(F.normalize(vectors, dim=1))


def drop_final_maxpool(features: nn.Module) -> None:
    """Replace a timm VGG's last max-pool by the identity (the official ``full/`` ``final_maxpool=False``)."""
    layers = features.model.features
    if not isinstance(layers[-1], nn.MaxPool2d):
        raise TypeError(f"expected a timm VGG whose feature stack ends with a max-pool, got {type(layers[-1]).__name__}")
    layers[-1] = nn.Identity()
