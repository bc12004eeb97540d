"""The contract between protobench's parts (see DESIGN.md): models, datasets, metrics.

Plugin authors write against these names. Conventions every part relies on:

* Images are float tensors in ``[0, 1]`` pixel space, shape ``[B, 3, H, W]``. A model
  normalises internally, so perturbations and attacks are stated in pixel space.
* A dataset item is a dict: ``image`` (``[3, H, W]`` float in ``[0, 1]``), ``label`` (int),
  ``index`` (int) and, where the dataset has them, ``keypoints`` (``[K, 3]``: x, y in pixels of
  the item's image, visible in {0, 1}) and ``bbox`` (``[4]``: x, y, width, height in pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

#: Leaderboard sections, in the order the tables show them (``MetricSpec.group``).
GROUPS = ("accuracy", "interpretability", "faithfulness", "robustness")

#: Capabilities a metric may need; the harness records "not applicable" where one is missing.
NEEDS = frozenset({"prototypes", "contributions", "keypoints", "interventions", "certified_margin"})


@dataclass
class Explanation:
    """One forward pass with its evidence.

    ``similarities`` is ``[B, P, h, w]`` over the latent grid (higher = more similar);
    ``contributions`` (optional) is ``[B, P, C]``, how much each prototype adds to each class's
    evidence in this pass; ``extra`` carries family-specific detail.
    """

    logits: Tensor
    similarities: Tensor
    contributions: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PrototypeModel(nn.Module):
    """Base class of every model protobench evaluates.

    Subclasses set ``num_classes``, ``input_size`` (H, W) and ``config`` (the json-serialisable
    dict that :meth:`ModelSpec.build` rebuilds the model from), register the buffer
    ``prototype_classes`` (``LongTensor[P]``; -1 for a prototype that serves no single class;
    empty for a model without prototypes) and implement :meth:`explain`.
    """

    num_classes: int
    input_size: tuple[int, int]
    config: dict[str, Any]
    prototype_classes: Tensor

    def explain(self, x: Tensor) -> Explanation:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.explain(x).logits

    @property
    def num_prototypes(self) -> int:
        return int(self.prototype_classes.numel())


class Progress(Protocol):
    """A progress-bar factory: wraps an iterable, like ``tqdm``."""

    def __call__(self, iterable: Any, *, desc: str = "", total: int | None = None) -> Any: ...


@dataclass
class TrainData:
    """What a family's training recipe receives.

    ``train`` is augmented; ``push`` is the same training images without augmentation (for
    prototype projection); ``test`` is held out. ``device`` is where the model lives.
    ``resume_dir``, set by the harness, is where the shared trainer keeps its resumable state
    (:mod:`protobench.runner.resume`); None: no resumable state.
    """

    train: torch.utils.data.Dataset
    push: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    num_classes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    num_workers: int = 0
    resume_dir: Path | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model family.

    ``build(config)`` returns a :class:`PrototypeModel`; ``train(model, data, config, progress)``
    runs the family's recipe and returns the trained model (None for eval-only plugins).
    ``profiles`` maps a profile name (``quick``, ``paper``) to overrides of ``default_config``.
    ``reference`` marks a calibration row (e.g. a part-supervised or a random-explanation model): the
    leaderboard shows it beside the models, marked as a reference, and never ranks it.
    ``from_official(state, config)`` (optional) maps a state dict saved by the paper's official code onto the
    state dict of ``build(config)`` (``protobench import``).
    """

    name: str
    build: Callable[[dict[str, Any]], PrototypeModel]
    train: Callable[[PrototypeModel, TrainData, dict[str, Any], Progress], PrototypeModel] | None
    default_config: Mapping[str, Any]
    paper: str
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    reference: bool = False
    from_official: Callable[[dict[str, Tensor], dict[str, Any]], dict[str, Tensor]] | None = None

    def config(self, profile: str | None = None, **overrides: Any) -> dict[str, Any]:
        """``default_config``, then the profile's overrides, then ``overrides``."""
        config = dict(self.default_config)
        config.update(self.profiles.get(profile, {}) if profile else {})
        config.update(overrides)
        return config


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: ``build(root, split, transform, **options) -> Dataset`` of item dicts.

    ``split`` is ``"train"`` or ``"test"``; ``transform`` maps an item dict to an item dict
    (see :mod:`protobench.data.transforms`, which keeps keypoints and boxes in step with the
    image). ``profiles`` maps a profile name to build options. The built dataset exposes
    ``num_classes`` and, if it has part keypoints, ``part_names``.
    """

    name: str
    build: Callable[..., torch.utils.data.Dataset]
    description: str = ""
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass
class MetricResult:
    """A metric's model-level ``value`` and its per-prototype (or per-item) ``detail``.

    ``value`` is None when the metric does not apply (never 0 in that case). ``interval`` is its 95%
    confidence interval over test images (low, high), where the metric provides one
    (:mod:`protobench.metrics.resampled`).
    """

    value: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    interval: tuple[float, float] | None = None

    @property
    def applicable(self) -> bool:
        return self.value is not None


@dataclass
class EvalContext:
    """What a metric knows besides the model: the evaluated dataset and run settings."""

    dataset: torch.utils.data.Dataset
    device: torch.device
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


class StreamingMetric(Protocol):
    """A metric's state: fed every batch of the shared pass, then computed once.

    ``torchmetrics.Metric`` subclasses fit this protocol (their states reduce across
    processes under torch.distributed).
    """

    def update(self, batch: dict[str, Any], explanation: Explanation) -> None: ...

    def compute(self) -> MetricResult: ...


@dataclass(frozen=True)
class MetricSpec:
    """A metric. ``compute(model, context)`` returns a fresh :class:`StreamingMetric`.

    The harness runs one pass over the test split, calls ``model.explain`` once per batch and
    feeds every metric; a metric that needs more (a perturbed pass, an attack) does it inside
    its own ``update``. ``needs`` names required capabilities (see :data:`NEEDS`).
    A ``costly`` metric (many passes per image: attacks, corruptions) is fed only the images of a
    deterministic, class-stratified subset of the test split whose size the profile sets (the
    harness's ``Settings.costly_images``); a metric with ``default=False`` runs only when named.
    ``group`` is the leaderboard section the metric is shown in (:data:`GROUPS`; empty: "other").
    """

    name: str
    compute: Callable[[PrototypeModel, EvalContext], StreamingMetric]
    higher_is_better: bool = True
    needs: frozenset[str] = frozenset()
    paper: str = ""
    costly: bool = False
    default: bool = True
    group: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.needs) - NEEDS
        if unknown:
            raise ValueError(f"metric {self.name!r} needs unknown capabilities {sorted(unknown)}")
