"""The shared work of the FunnyBirds protocols: one set of interventions and part importances per test batch.

FunnyBirds (Hesse, Schaub-Meyer and Roth, ICCV 2023; code github visinf/funnybirds-framework,
``evaluation_protocols.py``) runs each protocol on its own, one image at a time. Here one
:class:`FunnyBirdsPass`, kept in ``EvalContext.options`` and shared by the protocol metrics of a run, renders
each image's interventions once (deduplicated across protocols), runs the model on them in batches on the
run's device, and computes part importances for all thresholds at once (:class:`ImageOutcome` holds what
the protocols score). Only the work of the protocols that registered (:meth:`FunnyBirdsPass.want`) is done.

Part importance (funnybirds-framework ``explainers/explainer_wrapper.py``,
``AbstractAttributionExplainer.get_part_importance`` / ``get_important_parts``; for ProtoPNet github
visinf/funnybirds ``funnybirds_complete/explainers/explainer_wrapper.py``, ``ProtoPNetExplainer``):

* a part's importance is the attribution summed over the part's pixels (:func:`protobench.explain.attribution.
  attribution_maps`), with the part mask dilated by a 5 x 5 max filter for attribution explainers
  (Integrated Gradients) and undilated for prototype models;
* important parts at threshold t, attribution explainers: importance > t x the attribution's total;
  prototype models: the union of the regions of the class's prototypes with a positive contribution to it
  (the prototypes that carry the importance's weight; ProtoTree: the path nodes that add evidence for the
  class) covers more than the fraction t of the part.
  Named departure: FunnyBirds' ProtoPNet wrapper sums the 3-channel union over a 1-channel mask, so its
  effective fraction is t / 3; here it is t, the rule its comment states.

Parts are synthbirds' 11 named parts plus, where a protocol asks for them, the image's background objects
(FunnyBirds: 5 part kinds and up to 50 background objects).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from protobench.api.contract import EvalContext, Explanation, PrototypeModel
from protobench.data.synthbirds_classes import PART_NAMES
from protobench.explain.attribution import attribution_maps, prototype_attribution, uses_prototypes

#: Importance thresholds: funnybirds-framework ``AbstractExplainer.get_p_thresholds``
#: (``np.linspace(0.01, 0.50, num=80)``).
THRESHOLDS = torch.linspace(0.01, 0.50, 80, dtype=torch.float64)
#: Max-filter size dilating part masks for attribution explainers: ``get_part_importance``
#: (``nn.MaxPool2d(5, stride=1, padding=2)``); prototype models use none (``nn.MaxPool2d(1, ...)``).
ATTRIBUTION_DILATION = 5
#: Images per model call on intervention images (memory bound only).
FORWARD_BATCH = 64
#: Key of the shared pass in ``EvalContext.options``.
OPTION_KEY = "funnybirds_pass"

#: Work each protocol needs (see :meth:`FunnyBirdsPass.want`).
PROTOCOL_WORK = {
    "background_independence": {"objects"},
    "completeness": {"singles", "objects", "important", "preservation"},
    "correctness": {"singles", "importance"},
    "contrastivity": {"contrast"},
}


@dataclass
class ImageOutcome:
    """One test image's protocol inputs. Part slots: the 11 parts, then the image's background objects.

    ``part_removed`` / ``object_removed``: ``[K, C]`` / ``[O, C]`` logits with that one part / background
    object removed (K parts, O objects);
    ``importance``: target-class part importance ``[K]``; ``important``: ``[T, K + O]`` for the target
    class and ``important_predicted`` ``[T, K]`` for the predicted class; ``preserved`` / ``deleted``:
    ``[T, C]`` logits with the unimportant / important parts of the predicted class removed;
    ``contrast``: classes, removed part sets, logits and part importances of target sensitivity.
    """

    index: int
    label: int
    logits: Tensor
    objects: int = 0
    part_removed: Tensor | None = None
    object_removed: Tensor | None = None
    importance: Tensor | None = None
    important: Tensor | None = None
    important_predicted: Tensor | None = None
    preserved: Tensor | None = None
    deleted: Tensor | None = None
    contrast: dict[str, Any] | None = None

    @property
    def prediction(self) -> int:
        return int(self.logits.argmax())


@dataclass
class FunnyBirdsPass:
    """Per-batch interventions and part importances shared by the FunnyBirds protocol metrics."""

    model: PrototypeModel
    dataset: Any
    device: torch.device
    work: set[str] = field(default_factory=set)
    log: list[tuple[int, frozenset[str], frozenset[int]]] = field(default_factory=list)
    _key: tuple[int, ...] | None = None
    _outcomes: list[ImageOutcome] = field(default_factory=list)
    _seen: dict[tuple[int, frozenset[str], frozenset[int]], Tensor] = field(default_factory=dict)

    def want(self, protocol: str) -> None:
        """Register a protocol: its work (:data:`PROTOCOL_WORK`) is done for every batch from now on."""
        self.work |= PROTOCOL_WORK[protocol]

    def outcomes(self, batch: dict[str, Any], explanation: Explanation) -> list[ImageOutcome]:
        """The batch's outcomes, computed on the first call for this batch and reused by the others."""
        key = tuple(int(i) for i in batch["index"])
        if key != self._key:
            self._seen = {}
            self._outcomes = self._compute(batch, explanation)
            self._key = key
        return self._outcomes

    # --- the work -------------------------------------------------------------------------------------

    def _logits(self, jobs: list[tuple[int, Iterable[str], Iterable[int]]]) -> Tensor:
        """Logits ``[N, C]`` of the images re-rendered without the jobs' (index, parts, objects).

        Each distinct intervention of a batch is rendered and run once (:attr:`log` lists them).
        """
        keys = [(i, frozenset(p), frozenset(o)) for i, p, o in jobs]
        new = [key for key in dict.fromkeys(keys) if key not in self._seen]
        self.log.extend(new)
        for start in range(0, len(new), FORWARD_BATCH):
            chunk = new[start:start + FORWARD_BATCH]
            images = torch.stack([self.dataset.render_without(i, sorted(p), sorted(o))["image"] for i, p, o in chunk])
            with torch.no_grad():
                self._seen.update(zip(chunk, self.model(images.to(self.device)).float().cpu()))
        if not keys:
            return torch.zeros(0, self.model.num_classes)
        return torch.stack([self._seen[key] for key in keys])

    def _masks(self, batch: dict[str, Any], size: tuple[int, int]) -> tuple[Tensor, list[tuple[int, ...]]]:
        """Part and background-object masks ``[B, K + O_max, H, W]`` and each image's object indices."""
        objects = [self.dataset.background_objects(int(i)) for i in batch["index"]]
        width = len(PART_NAMES) + max((len(o) for o in objects), default=0)
        masks = torch.zeros(len(objects), width, *size, dtype=torch.bool)
        for b, index in enumerate(batch["index"]):
            parts, object_map = self.dataset.maps(int(index), size)
            masks[b, :len(PART_NAMES)] = parts[None] == torch.arange(1, len(PART_NAMES) + 1)[:, None, None]
            for slot, j in enumerate(objects[b]):
                masks[b, len(PART_NAMES) + slot] = object_map == j + 1
        return masks.to(self.device), objects

    def _importances(self, images: Tensor, explanation: Explanation, masks: Tensor, rows: list[int],
                     targets: list[int]) -> tuple[Tensor, Tensor]:
        """Part importance ``[N, S]`` and important parts ``[N, T, S]`` of (row, target) pairs."""
        rows_t = torch.tensor(rows, device=self.device)
        target = torch.tensor(targets, device=self.device)
        sub = _explanation_rows(explanation, rows_t, len(images))
        pair_masks = masks[rows_t].float()
        thresholds = THRESHOLDS.to(self.device, torch.float32)
        maps = attribution_maps(self.model, images[rows_t], target, sub)
        if uses_prototypes(self.model, sub):
            importance = torch.einsum("nhw,nshw->ns", maps, pair_masks)
            union = prototype_attribution(self.model, sub, target, tuple(images.shape[-2:]), weighted=False)
            covered = torch.einsum("nhw,nshw->ns", union, pair_masks)
            important = covered[:, None, :] > thresholds[None, :, None] * pair_masks.sum((2, 3))[:, None, :]
        else:
            pad = ATTRIBUTION_DILATION // 2
            dilated = F.max_pool2d(pair_masks, ATTRIBUTION_DILATION, stride=1, padding=pad)
            importance = torch.einsum("nhw,nshw->ns", maps, dilated)
            total = maps.sum((1, 2))
            important = importance[:, None, :] > thresholds[None, :, None] * total[:, None, None]
        return importance.cpu(), important.cpu()

    def _compute(self, batch: dict[str, Any], explanation: Explanation) -> list[ImageOutcome]:
        work, k = self.work, len(PART_NAMES)
        images = batch["image"].to(self.device)
        size = (images.shape[-2], images.shape[-1])
        indices = [int(i) for i in batch["index"]]
        outcomes = [ImageOutcome(i, int(y), lg) for i, y, lg in
                    zip(indices, batch["label"], explanation.logits.detach().float().cpu())]
        masks, objects = self._masks(batch, size)
        for outcome, objs in zip(outcomes, objects):
            outcome.objects = len(objs)

        # interventions that do not depend on the explanation: single parts, single objects, contrast sets
        jobs: list[tuple[int, Iterable[str], Iterable[int]]] = []
        for outcome, objs in zip(outcomes, objects):
            if "singles" in work:
                jobs += [(outcome.index, [p], []) for p in PART_NAMES]
            if work & {"objects"}:
                jobs += [(outcome.index, [], [j]) for j in objs]
            if "contrast" in work:
                pair = self.dataset.contrast_classes(outcome.label)
                if pair is not None:
                    shared = [self.dataset.shared_parts(outcome.label, c) for c in pair]
                    outcome.contrast = {"classes": pair, "shared": shared}
                    jobs += [(outcome.index, s, []) for s in shared]
        logits = iter(self._logits(jobs))
        for outcome in outcomes:
            if "singles" in work:
                outcome.part_removed = torch.stack([next(logits) for _ in range(k)])
            if "objects" in work:
                outcome.object_removed = torch.stack([next(logits) for _ in range(outcome.objects)]) \
                    if outcome.objects else torch.zeros(0, len(outcome.logits))
            if outcome.contrast is not None:
                outcome.contrast["logits"] = torch.stack([next(logits), next(logits)])

        # part importances: target class (CSDC, SD, D), predicted class (PC, DC), contrast classes (TS)
        rows, targets, roles = [], [], []
        for b, outcome in enumerate(outcomes):
            if work & {"important", "importance"}:
                rows.append(b), targets.append(outcome.label), roles.append((outcome, "target"))
            if "preservation" in work:
                rows.append(b), targets.append(outcome.prediction), roles.append((outcome, "predicted"))
            if outcome.contrast is not None and _contrast_assumption(outcome):
                for c in outcome.contrast["classes"]:
                    rows.append(b), targets.append(c), roles.append((outcome, "contrast"))
        if rows:
            pairs = list(dict.fromkeys(zip(rows, targets)))  # each (image, class) explained once
            importance, important = self._importances(images, explanation, masks, *map(list, zip(*pairs)))
            where = [pairs.index(pair) for pair in zip(rows, targets)]
            importance, important = importance[where], important[where]
            for n, (outcome, role) in enumerate(roles):
                slots = k + outcome.objects
                if role == "target":
                    outcome.importance, outcome.important = importance[n, :k], important[n, :, :slots]
                elif role == "predicted":
                    outcome.important_predicted = important[n, :, :k]
                else:
                    outcome.contrast.setdefault("importance", []).append(importance[n, :k])

        # preservation and deletion: remove the unimportant / important parts of the predicted class
        if "preservation" in work:
            jobs = []
            for outcome in outcomes:
                for row in outcome.important_predicted:
                    kept = {p for p, keep in zip(PART_NAMES, row.tolist()) if keep}
                    jobs += [(outcome.index, set(PART_NAMES) - kept, []), (outcome.index, kept, [])]
            logits = self._logits(jobs).reshape(len(outcomes), len(THRESHOLDS), 2, -1)
            for outcome, pair in zip(outcomes, logits):
                outcome.preserved, outcome.deleted = pair[:, 0], pair[:, 1]
        return outcomes


def _contrast_assumption(outcome: ImageOutcome) -> bool:
    """FunnyBirds' target-sensitivity filter: removing the parts class 1 shares with the target lowers class 1
    more than removing those class 2 shares, and the other way round (``target_sensitivity_protocol``)."""
    (c1, c2), removed = outcome.contrast["classes"], outcome.contrast["logits"]
    change = removed - outcome.logits[None]  # [removed set, class]
    return bool(change[0, c1] < change[1, c1] and change[1, c2] < change[0, c2])


def _explanation_rows(explanation: Explanation, rows: Tensor, batch: int) -> Explanation:
    """The explanation of some rows (repeats allowed) of a batch of ``batch`` images."""
    def take(value: Any) -> Any:
        return value[rows.to(value.device)] if isinstance(value, Tensor) and value.dim() and len(value) == batch \
            else value
    return Explanation(
        logits=take(explanation.logits), similarities=take(explanation.similarities),
        contributions=None if explanation.contributions is None else take(explanation.contributions),
        extra={key: take(value) for key, value in explanation.extra.items()},
    )


def shared_pass(model: PrototypeModel, context: EvalContext, protocol: str) -> FunnyBirdsPass:
    """The run's :class:`FunnyBirdsPass` (made on first use, kept in ``context.options``), with ``protocol``
    registered."""
    found = context.options.get(OPTION_KEY)
    if found is None or found.model is not model:
        found = FunnyBirdsPass(model, context.dataset, context.device)
        context.options[OPTION_KEY] = found
    found.want(protocol)
    return found
