"""Prototype galleries: one PNG per prototype, so a person can see what it means and whether it is consistent.

Each picture shows, left to right, the prototype's source (the training patch push projected it onto, where
the model records it in the optional buffer ``prototype_sources`` ``[P, 3]``: dataset index, row, column) and
its top-k activations on the test split. Every panel draws the prototype's region (:mod:`protobench.explain.regions`,
the same box the consistency metric uses) and marks the visible part keypoints: green inside the region (the
parts in the part vector), grey outside. The title carries the consistency verdict when one is given, and the
prototype's set where the family has several (the explanation's ``extra["prototype_set"]``, one name per
prototype, e.g. ST-ProtoPNet's support and trivial prototypes).

Beside the panels, a text column says why the prototype matches (:mod:`protobench.explain.because`, Nauta et al.
2021): the global influence of hue, shape, texture, contrast and saturation on its similarity, largest first,
with the dominant one named (from the ``because`` metric's record when given, else computed over the gallery's
top-k images of the prototype), and the local influences on its top activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from protobench.api.contract import PrototypeModel
from protobench.api.plugins import Registry
from protobench.data.transforms import eval_transform
from protobench.explain.because import CHARACTERISTICS, describe, local_influences, weighted_sums
from protobench.explain.regions import prototype_regions
from protobench.metrics.part_vectors import part_vectors
from protobench.runner import harness
from protobench.runner.devices import resolve_device
from protobench.runner.progress import progress as default_progress


def top_activations(model: PrototypeModel, dataset: Dataset, k: int, device: torch.device,
                    batch_size: int = 64, progress: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Streaming top-``k`` test images per prototype: (max similarities ``[P, k]``, dataset indices ``[P, k]``)."""
    best = torch.full((model.num_prototypes, 0), float("-inf"))
    where = torch.zeros((model.num_prototypes, 0), dtype=torch.long)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in (progress(loader, desc="gallery", total=len(loader)) if progress else loader):
        with torch.no_grad():
            sims = model.explain(batch["image"].to(device)).similarities.flatten(2).amax(2).T.cpu()
        best = torch.cat([best, sims], dim=1)
        where = torch.cat([where, batch["index"][None].expand_as(sims)], dim=1)
        best, order = best.topk(min(k, best.shape[1]), dim=1)
        where = where.gather(1, order)
    return best, where


def draw_panel(ax: Any, item: dict[str, Any], box: torch.Tensor, part_names: Sequence[str], title: str) -> list[str]:
    """Draw one image with the region and keypoints; returns the names of the parts inside the region."""
    ax.imshow(item["image"].permute(1, 2, 0).clamp(0, 1).numpy())
    x0, y0, x1, y1 = box.tolist()
    ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color="yellow", lw=1.5))
    inside: list[str] = []
    if "keypoints" in item:
        kp = item["keypoints"]
        hit = part_vectors(box[None, None], kp[None])[0, 0]
        for (x, y, v), h, name in zip(kp.tolist(), hit.tolist(), part_names):
            if v > 0:
                ax.plot(x, y, "o", ms=3, color="lime" if h else "0.6", mec="black", mew=0.3)
            if h:
                inside.append(name)
    ax.set_title(title + ("\n" + ", ".join(inside) if inside else ""), fontsize=6)
    ax.axis("off")
    return inside


def region_boxes(model: PrototypeModel, images: torch.Tensor, prototype: int, device: torch.device) -> torch.Tensor:
    """``[N, 4]``: prototype ``prototype``'s region on each of ``images`` (``[N, 3, H, W]``)."""
    with torch.no_grad():
        explanation = model.explain(images.to(device))
    pairs = torch.stack([torch.arange(len(images)), torch.full((len(images),), prototype)], dim=1)
    return prototype_regions(model, explanation, tuple(images.shape[-2:]), pairs).cpu()


def because_text(model: PrototypeModel, images: torch.Tensor, prototype: int, device: torch.device,
                   known: dict[str, float | None] | None) -> str:
    """The text beside a prototype's panels: its global "because" influences (``known``, else the weighted
    mean over ``images``, its top activations) and the local ones on ``images[0]``, its top activation."""
    original, influences = local_influences(model, images.to(device))
    original, influences = original[:, prototype : prototype + 1], influences[..., prototype : prototype + 1]
    if known is None:
        total, weight = weighted_sums(original, influences)
        mean = (total[:, 0] / weight[0]).tolist() if float(weight[0]) > 0 else [None] * len(CHARACTERISTICS)
        known, scope = dict(zip(CHARACTERISTICS, mean)), f"over its top {len(images)}"
    else:
        scope = "over the test set"
    local = dict(zip(CHARACTERISTICS, influences[0, :, 0].tolist()))
    return (f"because (global, {scope}):\n  {_one_per_line(describe(known))}\n\n"
            f"because (local, top 1):\n  {_one_per_line(describe(local))}")


def _one_per_line(description: str) -> str:
    return description.replace(", ", ",\n  ")


def write_gallery(
    model: PrototypeModel,
    test: Dataset,
    out_dir: str | Path,
    push: Dataset | None = None,
    k: int = 5,
    prototypes: Sequence[int] | None = None,
    verdicts: dict[int, str] | None = None,
    influences: dict[int, dict[str, float | None]] | None = None,
    device: torch.device | str = "cpu",
    progress: Any = None,
) -> list[Path]:
    """Write ``proto_<p>_class_<c>.png`` for each prototype into ``out_dir``; returns the paths.

    ``push`` is the dataset ``prototype_sources`` indexes (the training split without augmentation);
    ``verdicts`` maps a prototype to a line for its title (e.g. its consistency); ``influences`` maps a
    prototype to its global "because" influences (characteristic -> value), e.g. from the metric's record.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    part_names = list(getattr(test, "part_names", None) or [])
    scores, indices = top_activations(model, test, k, device, progress=progress)
    sources = getattr(model, "prototype_sources", None)
    with torch.no_grad():
        sets = model.explain(test[0]["image"][None].to(device)).extra.get("prototype_set")
    chosen = range(model.num_prototypes) if prototypes is None else prototypes
    paths = []
    for p in chosen:
        cls = int(model.prototype_classes[p])
        has_source = push is not None and sources is not None and int(sources[p, 0]) >= 0
        items = [test[int(i)] for i in indices[p]]
        if has_source:
            items.insert(0, push[int(sources[p, 0])])
        images = torch.stack([it["image"] for it in items])
        boxes = region_boxes(model, images, p, device)
        because = because_text(model, images[int(has_source):], p, device, (influences or {}).get(p))
        fig, axes = plt.subplots(1, len(items) + 1, figsize=(1.6 * len(items) + 2.2, 2.1), squeeze=False,
                                 gridspec_kw={"width_ratios": [1.0] * len(items) + [1.4]})
        axes[0, -1].axis("off")
        axes[0, -1].text(0, 1, because, fontsize=5.5, va="top", ha="left", family="monospace",
                         transform=axes[0, -1].transAxes)
        for j, (ax, item, box) in enumerate(zip(axes[0], items, boxes)):
            if has_source and j == 0:
                title = f"source: train #{int(sources[p, 0])}"
            else:
                rank = j - has_source
                title = f"top {rank + 1}: test #{int(indices[p, rank])}, sim {float(scores[p, rank]):.2f}"
            draw_panel(ax, item, box, part_names, title)
        label = ("class-agnostic" if cls < 0 else f"class {cls}") + (f", {sets[p]}" if sets else "")
        verdict = (verdicts or {}).get(p, "")
        fig.suptitle(f"prototype {p} ({label})" + (f" — {verdict}" if verdict else ""), fontsize=8)
        fig.tight_layout()
        path = out / f"proto_{p:04d}_class_{cls}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def contact_sheet(paths: Sequence[Path], out: str | Path) -> Path:
    """Stack gallery pictures top to bottom into one PNG (white padding to the widest); returns ``out``."""
    images = [Image.open(p).convert("RGB") for p in paths]
    if not images:
        raise ValueError("a contact sheet needs at least one picture")
    sheet = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images)), "white")
    top = 0
    for im in images:
        sheet.paste(im, (0, top))
        top += im.height
    sheet.save(out)
    return Path(out)


def model_gallery(
    registry: Registry,
    model: str,
    settings: harness.Settings,
    out_dir: Path,
    k: int = 5,
    prototypes: list[int] | None = None,
    progress: Any = default_progress,
) -> list[Path]:
    """Write the prototype gallery of a trained model (drawn by :func:`write_gallery`).

    Titles carry the stored consistency verdicts; the "because" text uses the stored ``because`` record's
    global influences where the store has it (else the gallery computes them over its own images).
    """
    device = resolve_device(settings.device)
    net, _ = harness.load_trained(registry, model, settings, device)
    run_identity = harness.identity(registry, model, settings)
    if net.num_prototypes == 0:
        raise ValueError(f"model {model!r} has no prototypes, so it has no gallery")
    transform = eval_transform(harness._input_size(net.config))
    test = harness.build_split(registry, settings, "test", transform)
    push = harness.build_split(registry, settings, "train", transform)
    verdicts = {}
    key = settings.record_key(run_identity, "consistency")
    if settings.store.has(key) and settings.store.get(key)["value"] is not None:
        per = settings.store.get(key)["detail"]["per_prototype"]
        for p, (ok, part, freq) in enumerate(zip(per["consistent"], per["part"], per["max_part_frequency"])):
            found = f"{part} in {freq:.0%} of its class's images" if freq > 0 else "no part in its region"
            verdicts[p] = f"{'consistent' if ok else 'inconsistent'}: {found}"
    influences = {}
    key = settings.record_key(run_identity, "because")
    if settings.store.has(key) and settings.store.get(key)["value"] is not None:
        detail = settings.store.get(key)["detail"]
        per = detail["per_prototype"]
        for p in range(net.num_prototypes):
            influences[p] = {name: per[name][p] for name in detail["characteristics"]}
    return write_gallery(net, test, out_dir, push=push, k=k, prototypes=prototypes, verdicts=verdicts,
                         influences=influences, device=device, progress=progress)
