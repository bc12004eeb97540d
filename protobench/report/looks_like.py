""""This looks like that" for any model, from the contract alone (Chen et al., NeurIPS 2019, Fig. 3 and Sec. 2.4).

For one test image: the prototypes that added the most evidence to the predicted class (the explanation's
``contributions``; a model without them is ranked by its similarity, among the predicted class's prototypes),
each with its similarity (the map's maximum), its contribution, its region on the test image
(:func:`protobench.explain.regions.prototype_regions`) and its source patch (the optional ``prototype_sources``), then
the evidence summed per class. Printed as a table (:func:`describe`) and drawn as one PNG (:func:`draw`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protobench.api.contract import PrototypeModel
from protobench.explain.regions import prototype_regions
from protobench.report.gallery import draw_panel, plt, region_boxes


@dataclass
class Evidence:
    """One prototype's part in a decision."""

    prototype: int
    prototype_class: int
    similarity: float
    contribution: float | None
    region: list[int]  # x0, y0, x1, y1 on the test image
    source: int | None  # training-set index of its source image


@dataclass
class Decision:
    predicted: int
    logits: list[float]
    evidence: list[Evidence]
    per_class: dict[int, float] | None  # summed contributions of every prototype, top classes


def decide(model: PrototypeModel, image: torch.Tensor, top: int = 5) -> Decision:
    """The top-``top`` prototypes behind ``model``'s decision on ``image`` (``[3, H, W]``)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        out = model.explain(image[None].to(device))
    logits = out.logits[0].cpu()
    predicted = int(logits.argmax())
    similarity = out.similarities[0].flatten(1).amax(1).cpu()
    if out.contributions is not None:
        contribution = out.contributions[0, :, predicted].cpu()
        order = contribution.argsort(descending=True, stable=True)
        totals = out.contributions[0].sum(0).cpu()
        ranked = totals.argsort(descending=True, stable=True)[:3].tolist()
        per_class = {c: float(totals[c]) for c in ranked}
    else:
        contribution, per_class = None, None
        own = (model.prototype_classes.cpu() == predicted) | (model.prototype_classes.cpu() < 0)
        order = torch.where(own, similarity, torch.tensor(float("-inf"))).argsort(descending=True, stable=True)
        order = order[: int(own.sum())]
    chosen = order[:top]
    pairs = torch.stack([torch.zeros_like(chosen), chosen], dim=1)
    boxes = prototype_regions(model, out, tuple(image.shape[-2:]), pairs).cpu()
    sources = getattr(model, "prototype_sources", None)
    evidence = []
    for p, box in zip(chosen.tolist(), boxes.tolist()):
        source = int(sources[p, 0]) if sources is not None and int(sources[p, 0]) >= 0 else None
        evidence.append(Evidence(p, int(model.prototype_classes[p]), float(similarity[p]),
                                 None if contribution is None else float(contribution[p]), box, source))
    return Decision(predicted, logits.tolist(), evidence, per_class)


def _name(c: int, class_names: Sequence[str] | None) -> str:
    if c < 0:
        return "any class"
    return f"{c} ({class_names[c]})" if class_names else str(c)


def describe(decision: Decision, index: int, class_names: Sequence[str] | None = None) -> str:
    """The decision as a table: rank, prototype, its class, similarity, contribution, source; then per class."""
    lines = [(f"test image #{index}: predicted class {_name(decision.predicted, class_names)}, "
             f"logit {decision.logits[decision.predicted]:.3f}"),
             "this looks like that:",
             f"{'rank':>4}  {'prototype':>9}  {'class':>5}  {'similarity':>10}  {'contribution':>12}  source"]
    for rank, e in enumerate(decision.evidence, 1):
        contribution = "—" if e.contribution is None else f"{e.contribution:.3f}"
        source = "—" if e.source is None else f"train #{e.source}"
        cls = "any" if e.prototype_class < 0 else str(e.prototype_class)
        lines.append(f"{rank:>4}  {e.prototype:>9}  {cls:>5}  "
                     f"{e.similarity:>10.3f}  {contribution:>12}  {source}")
    if decision.per_class:
        lines.append("evidence summed over every prototype, top classes: " + ", ".join(
            f"{_name(c, class_names)} {v:.3f}" for c, v in decision.per_class.items()))
    else:
        lines.append("(the model gives no contributions: prototypes of the predicted class ranked by similarity)")
    return "\n".join(lines)


def draw(model: PrototypeModel, decision: Decision, item: dict[str, Any], path: str | Path, push: Any = None,
         part_names: Sequence[str] = (), class_names: Sequence[str] | None = None) -> Path:
    """One row per prototype: its region on the test image, then its region on its source image (where known)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    rows = max(len(decision.evidence), 1)
    figure, axes = plt.subplots(rows, 2, figsize=(4.6, 2.3 * rows), squeeze=False)
    for row, e in zip(axes, decision.evidence):
        contribution = "" if e.contribution is None else f", +{e.contribution:.2f}"
        draw_panel(row[0], item, torch.tensor(e.region), part_names,
                   f"this: prototype {e.prototype}\nsim {e.similarity:.2f}{contribution}")
        if push is not None and e.source is not None:
            source = push[e.source]
            (box,) = region_boxes(model, source["image"][None], e.prototype, device)
            draw_panel(row[1], source, box, part_names,
                       f"looks like that:\ntrain #{e.source}, class {e.prototype_class}")
        else:
            row[1].axis("off")
    figure.suptitle(f"predicted {_name(decision.predicted, class_names)}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
