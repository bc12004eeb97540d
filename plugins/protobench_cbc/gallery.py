"""One class's CBC reasoning as a picture (AAAI 2025, Fig. 1 and Sec. 6's reasoning visualisations).

Rows: the class's top positive components (largest ``r+ - r-``: evidence when present), then its top negative
components (largest ``r- - r+``: evidence when absent). Each row names the component and its reasoning
probabilities, then shows the component's top-activating test images with its region
(:func:`protobench.explain.regions.prototype_regions`, the box the metrics use), as the deep code's
``utils/visualize_predictions.py`` shows a component by its top patches.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch.utils.data import Dataset

from protobench.explain.regions import prototype_regions
from protobench.report.gallery import top_activations

from .model import _CBCBase


def draw_reasoning(model: _CBCBase, dataset: Dataset, class_index: int, path: str | Path, components: int = 3,
                   patches: int = 4, class_name: str | None = None, device: torch.device | None = None) -> Path:
    """Write the PNG of class ``class_index``'s reasoning to ``path``: ``components`` positive and negative rows."""
    device = device or next(model.parameters()).device
    model.eval()
    positive, negative = model.reasoning()
    concept = class_index  # the class's first reasoning concept
    weight = (positive - negative)[:, concept].detach().cpu()
    rows = [(int(k), "+") for k in weight.topk(components).indices] + \
           [(int(k), "-") for k in (-weight).topk(components).indices]
    best, where = top_activations(model, dataset, patches, device)
    fig, axes = plt.subplots(len(rows), patches + 1, figsize=(1.9 * (patches + 1), 1.9 * len(rows)), squeeze=False)
    name = class_name or f"class {class_index}"
    fig.suptitle(f"CBC reasoning for {name}: + evidence when present, - evidence when absent", fontsize=9)
    for row, (k, sign) in enumerate(rows):
        text = axes[row, 0]
        text.axis("off")
        text.text(0.0, 0.5, f"{sign} component {k}\nr+ = {positive[k, concept]:.3f}\nr- = {negative[k, concept]:.3f}",
                  fontsize=8, va="center", color="green" if sign == "+" else "red")
        items = [dataset[int(i)] for i in where[k]]
        images = torch.stack([item["image"] for item in items]).to(device)
        with torch.no_grad():
            explanation = model.explain(images)
        pairs = torch.stack([torch.arange(len(items)), torch.full((len(items),), k)], dim=1).to(device)
        boxes = prototype_regions(model, explanation, images.shape[-2:], pairs=pairs).cpu()
        for col, (item, box) in enumerate(zip(items, boxes), start=1):
            ax = axes[row, col]
            ax.imshow(item["image"].permute(1, 2, 0).clamp(0, 1).numpy())
            x0, y0, x1, y1 = box.tolist()
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color="yellow",
                                       lw=1.5))
            ax.set_title(f"d={best[k, col - 1]:.2f}, y={int(item['label'])}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
