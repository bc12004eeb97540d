"""The shared stand-in for ImageNet weights (DESIGN.md, "Quick-profile geometry").

The papers' prototype networks all start from the same ImageNet (or iNaturalist) weights, whose
features are local: a cell of the latent grid describes what is in and near it. protobench never
downloads weights, so a model config may ask for ``weights = "synthbirds-standin"`` (:data:`STANDIN`):
before the model is built, the harness replaces it with the path of a backbone pretrained once per
(backbone name, output stride, resolution, :class:`StandinRecipe`) and cached under
``<workdir>/standins/<name>-<content hash>/`` (safetensors + json, the json written last), which every
family's quick profile then reuses.

The pretraining set is synthbirds drawn with its own seed from classes disjoint from every benchmark
of up to ``first_class`` classes (the end of the class enumeration), with more classes than the
benchmark's 24; only images and labels are used: no keypoints, no part maps, no benchmark image. The
objective is plain classification through global average pooling (cross-entropy, Adam); locality comes
from the backbone's bounded receptive field (:mod:`protobench.models.localnet`), not from the objective.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from protobench.api.contract import Progress, TrainData
from protobench.data.synthbirds import SynthBirds, make_config
from protobench.data.synthbirds_classes import MAX_CLASSES
from protobench.data.transforms import eval_transform, train_transform
from protobench.models.backbones import BackboneClassifier, ImageNetNormalize, build_backbone
from protobench.runner.atomic import write_atomic, write_json_atomic
from protobench.runner.devices import seed_everything
from protobench.runner.training import ParamGroup, Phase, StepSchedule, cross_entropy_objective, run_recipe

#: The value of a model config's ``weights`` that asks for the shared stand-in backbone.
STANDIN = "synthbirds-standin"
WEIGHTS, META = "backbone.safetensors", "standin.json"

#: The backbone every family's quick profile shares: an 8x8 latent grid at 64 px, local features
#: (19-px receptive field), starting from the stand-in (README, "Quick-profile geometry").
QUICK_BACKBONE: dict[str, Any] = {"backbone": "localnet_rf19", "output_stride": 8, "weights": STANDIN}


@dataclass(frozen=True)
class StandinRecipe:
    """How the stand-in is pretrained: the synthbirds pretraining set and the optimiser.

    Classes ``first_class .. first_class + num_classes - 1`` of the enumeration (disjoint from a
    benchmark's first ``first_class`` classes), ``images_per_class`` images each (10% held out to
    report the stand-in's own accuracy), drawn with ``seed``; Adam at ``lr`` with weight decay, the
    learning rate times ``lr_gamma`` every ``lr_step_size`` epochs; the harness's augmentation.
    """

    num_classes: int = 48
    first_class: int = MAX_CLASSES - 48
    images_per_class: int = 70
    seed: int = 1000
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    lr_step_size: int = 6
    lr_gamma: float = 0.1


def standin_key(backbone: str, output_stride: int | None, resolution: int, recipe: StandinRecipe) -> dict[str, Any]:
    """Everything that determines the stand-in's weights."""
    return {"backbone": backbone, "output_stride": output_stride, "resolution": resolution,
            "recipe": dataclasses.asdict(recipe)}


def standin_dir(workdir: Path, key: dict[str, Any]) -> Path:
    """``<workdir>/standins/<backbone>-s<stride>-<res>px-<hash of key>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{key['backbone']}-s{key['output_stride']}-{key['resolution']}px-{digest}"
    return Path(workdir) / "standins" / name


def standin_weights(
    backbone: str,
    output_stride: int | None,
    resolution: int,
    workdir: Path,
    device: torch.device,
    progress: Progress,
    recipe: StandinRecipe = StandinRecipe(),
) -> Path:
    """The stand-in's weights file (timm key layout), pretraining it first unless it is cached."""
    key = standin_key(backbone, output_stride, resolution, recipe)
    directory = standin_dir(workdir, key)
    if (directory / META).is_file() and (directory / WEIGHTS).is_file():
        return directory / WEIGHTS
    options = {"num_classes": recipe.num_classes, "first_class": recipe.first_class, "seed": recipe.seed,
               "images_per_class": recipe.images_per_class, "test_fraction": 0.1, "resolution": resolution}
    config = make_config(**options)
    shift = resolution // 16
    data = TrainData(train=SynthBirds(config, "train", train_transform(resolution, shift)),
                     push=SynthBirds(config, "train", eval_transform(resolution)),
                     test=SynthBirds(config, "test", eval_transform(resolution)),
                     num_classes=recipe.num_classes, device=device)
    seed_everything(recipe.seed)
    features, channels = build_backbone(backbone, output_stride=output_stride)
    model = BackboneClassifier(ImageNetNormalize(), features, channels, recipe.num_classes).to(device)
    phase = Phase("standin", recipe.epochs,
                  (ParamGroup("backbone", recipe.lr, recipe.weight_decay), ParamGroup("head", recipe.lr)),
                  cross_entropy_objective, {"cross_entropy": 1.0},
                  schedule=StepSchedule(recipe.lr_step_size, recipe.lr_gamma))
    start = time.perf_counter()
    history = run_recipe(model, [phase], data, progress, batch_size=recipe.batch_size, seed=recipe.seed)
    seconds = time.perf_counter() - start
    accuracy = _accuracy(model, data.test, device)
    state = {k: v.detach().cpu().contiguous() for k, v in features.model.state_dict().items()}
    write_atomic(directory / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    write_json_atomic(directory / META, {**key, "train_seconds": round(seconds, 1),
                                         "train_accuracy": history[-1].accuracy, "test_accuracy": accuracy})
    return directory / WEIGHTS


@torch.no_grad()
def _accuracy(model: torch.nn.Module, dataset: SynthBirds, device: torch.device) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=256)
    correct = sum(int((model(b["image"].to(device)).argmax(1).cpu() == b["label"]).sum()) for b in loader)
    return correct / len(dataset)


def resolve_weights(config: dict[str, Any], workdir: Path, device: torch.device, progress: Progress) -> dict[str, Any]:
    """``config`` with ``weights = STANDIN`` replaced by the stand-in's file (pretrained if needed)."""
    if config.get("weights") != STANDIN:
        return config
    size = config["input_size"]
    resolution = size if isinstance(size, int) else int(size[0])
    path = standin_weights(config["backbone"], config.get("output_stride"), resolution, workdir, device, progress)
    return {**config, "weights": str(path)}
