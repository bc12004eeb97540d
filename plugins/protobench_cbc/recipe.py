"""CBC training recipes as shared-trainer phases.

Deep CBC, as github si-cim/cbc-aaai-2025 ``deep_cbc/cbcnet_executor.py`` runs it (``train_cbcnet.py``,
``calculate_loss``):

1. ``pretrain`` (``epochs_pretrain``): PIP-Net's self-supervised pretraining of the components, the head
   frozen: the alignment loss of the two views' channel-softmaxed maps (``align_loss``, each view against
   the other detached, averaged) with weight ``epoch / epochs_pretrain`` (epochs from 1) plus 5 x the tanh
   loss ``-mean_k log(tanh(sum_batch d_k) + 1e-8)`` (averaged over the views); trains the last backbone
   stages at ``lr_block``; cosine annealing to ``lr_block / 100`` over the phase.
2. ``head`` (``epochs_fine_tune``): the reasoning head alone at ``lr_classifier_fine_tune`` on the margin loss
   ``relu(max_{j != y} p_j - p_y + margin)``, margin 0.025.
3. ``joint`` (``epochs_net``): end to end (the last backbone stages and the head, both at ``lr_net``; the
   early stages stay frozen, ``params_backbone``) on the margin loss alone (the official ``finetune=True``).

Which backbone parameters train is ``trainable`` (a list of parameter-name prefixes), the official
``params_to_train`` and ``params_to_freeze`` (ResNet-50: ``layer3``, ``layer4``; ConvNeXt: ``features.6``,
``features.7``).

Departures: PIP-Net's two views are two augmentations of one image that share the geometric transform and
differ in TrivialAugment; here the second view is the batch itself with a photometric jitter (brightness,
contrast, Gaussian noise; hue is kept, since synthbirds classes are colours), the first view the batch
unchanged. The official schedules are per batch (cosine) and ReduceLROnPlateau (patience 10) in the later
phases; here the cosine is stepped per epoch and the plateau schedulers are left out (they never fire within
the quick profile's few epochs). Adam (with weight decay 0 as the official config) stands in for AdamW.

Robust CBC (enlaight ``RobustStableCBC``; its experiments' ``experiments/base_script.py``): the backbone is
frozen (the certificate is in its feature space), so the latent grids of the training images are computed
once, in eval mode, and the robust phase trains on them (:func:`cache_latents`; departure: no augmentation in
this phase, the un-augmented ``push`` images; in return, 20x cheaper epochs and batch-norm statistics that are
the eval ones). An init sets the components to random latent cells of training images and sigma (all
components alike) by enlaight's recommendation ``sigma = -(mean + std) / ln(p0)`` of the minimal distances,
``p0 = 0.5`` (``ExponentiallySquashedNegativeDistance``'s doc), and measures the latent scale that fixes the
certificate's budgets; then ``robust`` trains components, sigma and reasoning with Adam at ``lr`` (enlaight's
default 1e-2) on ``relu(robust_margin - radius)`` with the true label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from protobench.api.contract import Progress, PrototypeModel, TrainData
from protobench.runner.training import ParamGroup, Phase, Step, run_recipe

from .model import DeepCBC, RobustCBC
from .reasoning import margin_loss, robust_loss

#: PIP-Net's loss weights in pretraining (``train_cbcnet.py``): tanh 5, alignment epoch / epochs.
TANH_WEIGHT, LOSS_EPS = 5.0, 1e-8


@dataclass(frozen=True)
class CosineSchedule:
    """``lr = base (eta + (1 - eta)(1 + cos(pi epoch / epochs)) / 2)``: cosine annealing to ``eta`` x base."""

    epochs: int
    eta: float = 0.01

    def factor(self, epoch: int) -> float:
        return self.eta + (1 - self.eta) * (1 + math.cos(math.pi * epoch / self.epochs)) / 2


def second_view(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A photometric jitter of ``images`` (brightness and contrast x U(0.8, 1.2), noise 0.02), in [0, 1]."""
    b = len(images)
    shape = (b, 1, 1, 1)
    scale = 0.8 + 0.4 * torch.rand(shape, generator=generator).to(images)
    contrast = 0.8 + 0.4 * torch.rand(shape, generator=generator).to(images)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    noise = 0.02 * torch.randn(images.shape, generator=generator).to(images)
    return ((images - mean) * contrast + mean * scale + noise).clamp(0, 1)


def align_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """PIP-Net's alignment: ``-mean log(<inputs, targets>)`` over the rows (``train_cbcnet.align_loss``)."""
    return -torch.log((inputs * targets).sum(dim=1) + 1e-12).mean()


def pretrain_objective(model: DeepCBC, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """Alignment and tanh losses of the two views (the head is not used)."""
    images = batch["image"]
    maps = torch.softmax(model.latent(torch.cat([images, second_view(images)])), dim=1)
    pooled1, pooled2 = maps.amax(dim=(2, 3)).chunk(2)
    emb1, emb2 = (m.flatten(2).transpose(1, 2).flatten(0, 1) for m in maps.chunk(2))
    align = (align_loss(emb1, emb2.detach()) + align_loss(emb2, emb1.detach())) / 2
    tanh = -(torch.log(torch.tanh(pooled1.sum(0)) + LOSS_EPS).mean()
             + torch.log(torch.tanh(pooled2.sum(0)) + LOSS_EPS).mean()) / 2
    logits = torch.log(model.head(pooled1).clamp_min(1e-30)).detach()
    return logits, {"align": align, "tanh": tanh}


def margin_objective(model: nn.Module, batch: dict[str, Any], margin: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The margin loss on the class probabilities (``explain().extra["probabilities"]``)."""
    out = model.explain(batch["image"])
    return out.logits, {"margin": margin_loss(out.extra["probabilities"], batch["label"], margin).mean()}


def clamp_head(model: nn.Module) -> None:
    """After each step: keep the original CBC's requiredness in [0, 1]."""
    model.head.clamp_()


def deep_recipe(config: dict[str, Any]) -> list[Phase]:
    """The three phases of deep CBC for ``config`` (keys: see the plugin's ``PAPER``)."""
    backbone = tuple(ParamGroup(f"features.{p}", config["lr_block"]) for p in config["trainable"])
    margin = partial(margin_objective, margin=config["margin"])
    phases = []
    pretrain = config["epochs_pretrain"]
    for epoch in range(1, pretrain + 1):
        phases.append(Phase(f"pretrain-{epoch}", 1, backbone, pretrain_objective,
                            {"align": epoch / pretrain, "tanh": TANH_WEIGHT}, optimizer="pretrain",
                            schedule=CosineSchedule(pretrain)))
    if config["epochs_fine_tune"]:
        phases.append(Phase("head", config["epochs_fine_tune"], (ParamGroup("head", config["lr_classifier_fine_tune"]),),
                            margin, {"margin": 1.0}, after_step=clamp_head))
    if config["epochs_net"]:
        joint = tuple(ParamGroup(g.prefix, config["lr_net"]) for g in backbone) + (ParamGroup("head", config["lr_net"]),)
        phases.append(Phase("joint", config["epochs_net"], joint, margin, {"margin": 1.0}, after_step=clamp_head))
    return phases


def train_deep(model: PrototypeModel, data: TrainData, config: dict[str, Any], progress: Progress) -> PrototypeModel:
    """ModelSpec.train for ``cbc``: :func:`deep_recipe` with the shared trainer."""
    run_recipe(model, deep_recipe(config), data, progress, batch_size=config["batch_size"])
    return model


class LatentSet(torch.utils.data.Dataset):
    """Cached latent grids as training items: ``{"latent": z, "label": y, "image": empty placeholder}``."""

    def __init__(self, latents: Tensor, labels: Tensor):
        self.latents, self.labels = latents, labels
        self.placeholder = torch.zeros(0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.placeholder, "latent": self.latents[i], "label": self.labels[i]}


@torch.no_grad()
def cache_latents(model: RobustCBC, data: TrainData, progress: Progress, batch: int = 128) -> LatentSet:
    """The frozen backbone's latent grids of every ``push`` image (eval mode), once."""
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(data.push, batch_size=batch, num_workers=data.num_workers)
    latents, labels = [], []
    for item in progress(loader, desc="latents", total=len(loader)):
        latents.append(model.latent(item["image"].to(model.components.device)).cpu())
        labels.append(item["label"])
    model.train(was_training)
    return LatentSet(torch.cat(latents), torch.cat(labels))


@torch.no_grad()
def init_components(model: RobustCBC, latents: Tensor, images: int = 256, p0: float = 0.5) -> None:
    """Components from random latent cells of ``images`` training grids; sigma from their minimal distances.

    Also sets ``model.latent_scale`` (the RMS L2 norm of a latent cell over all ``latents``), which fixes
    the certificate's budgets (:attr:`.model.RobustCBC.certificate`) before any training.
    """
    generator = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    device = model.components.device
    model.latent_scale.fill_(float(latents.pow(2).sum(1).mean().sqrt()))
    z = latents[torch.randperm(len(latents), generator=generator)[:images]].to(device)  # [N, D, h, w]
    cells = z.permute(0, 2, 3, 1).flatten(0, 2)
    k = model.components.shape[0]
    model.components.copy_(cells[torch.randperm(len(cells), generator=generator)[:k]])
    nearest = torch.cat([model.latent_distances(part)[1] for part in z.split(64)])
    model.raw_sigma.fill_(float(-(nearest.mean() + nearest.std()) / math.log(p0)))


def robust_objective(model: RobustCBC, batch: dict[str, Any], margin: float | None) -> tuple[Tensor, dict[str, Tensor]]:
    """enlaight's robust loss ``relu(margin - radius)`` (``-radius`` without a margin) on the true labels.

    Reads the cached latent grid ``batch["latent"]`` where there is one, else runs the backbone on the image.
    """
    if "latent" in batch:
        _, nearest = model.latent_distances(batch["latent"].float())
    else:
        _, nearest = model.min_distances(batch["image"])
    radius = model.radius(nearest, batch["label"])
    with torch.no_grad():
        logits = torch.log(model.head(torch.exp(-nearest / model.sigma)).clamp_min(1e-30))
    return logits, {"robust": robust_loss(radius, margin).mean()}


def robust_recipe(config: dict[str, Any]) -> list[Phase | Step]:
    """The robust phase (keys: see the plugin's ``ROBUST_PAPER``); :func:`train_robust` runs the init first."""
    groups = tuple(ParamGroup(name, config["lr"]) for name in ("components", "raw_sigma", "head"))
    return [Phase("robust", config["epochs"], groups, partial(robust_objective, margin=config["robust_margin"]),
                  {"robust": 1.0})]


def train_robust(model: PrototypeModel, data: TrainData, config: dict[str, Any], progress: Progress) -> PrototypeModel:
    """ModelSpec.train for ``cbc-robust``: cache the frozen backbone's latents, init, then the robust phase."""
    latents = cache_latents(model, data, progress)
    init_components(model, latents.latents)
    cached = TrainData(train=latents, push=data.push, test=data.test, num_classes=data.num_classes,
                       device=data.device, num_workers=0)
    run_recipe(model, robust_recipe(config), cached, progress, batch_size=config["batch_size"])
    return model
