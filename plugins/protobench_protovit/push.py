"""ProtoViT's push (Ma et al., NeurIPS 2024, Sec. 3, projection; official ``push_greedy.py``).

First the slots become hard: ``patch_select`` is set to +200 where ``sigmoid(temp * patch_select)`` rounds
to 1 (above 0.5; ``torch.round`` sends 0.5 to 0) and -200 elsewhere, so every slot is exactly 1 or 0 from
then on.
Then, class-specific, every prototype takes the push-set image of its class on which its (hard-slot) greedy
score is highest, and each of its kept sub-prototypes becomes the latent token (``patch - cls``, not
normalised) its greedy match found on that image; a pruned sub-prototype becomes the zero vector (the
official ``global_min_fmap_patches`` stays 0 there), so its similarity is 0 everywhere. The model runs in eval
mode (the harness's push set is not augmented); a tie keeps the earliest image in dataset order.

Buffers written: ``prototype_sources [P, 3]`` (dataset index, row, column of the first kept sub-prototype's
patch) and ``prototype_source_cells [P, K]`` (row-major patch of each sub-prototype, -1 where pruned), for
galleries.

Departure: a prototype whose class has no push image keeps its vectors and sources (the official code would
set them to zero).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from protobench.api.contract import Progress, TrainData
from protobench.runner.training import batch_to

#: The official ``push_prototypes`` fixes the slots at ``sign * 200`` (``result_tensor``).
HARD_SLOT = 200.0


@torch.no_grad()
def harden_slots(model: torch.nn.Module) -> None:
    """Round the slots at 0.5 and fix them hard (``patch_select <- +-200``)."""
    kept = model.slots() > 0.5
    model.patch_select.copy_(torch.where(kept, HARD_SLOT, -HARD_SLOT))


@torch.no_grad()
def push_prototypes(model: torch.nn.Module, data: TrainData, progress: Progress, *, batch_size: int) -> None:
    """Harden the slots, then move each kept sub-prototype to its greedy match on the best own-class image."""
    model.eval()
    harden_slots(model)
    kept = model.slots()[0] > 0.5  # [P, K]
    classes = model.prototype_classes
    vectors = model.prototype_vectors.detach().clone()
    sources, cells_at = model.prototype_sources.clone(), model.prototype_source_cells.clone()
    best = torch.full((len(classes),), float("-inf"), device=vectors.device)
    width = model.grid[1]
    loader = DataLoader(data.push, batch_size=batch_size, shuffle=False, num_workers=data.num_workers)
    for batch in progress(loader, desc="push", total=len(loader)):
        batch = batch_to(batch, data.device)
        m = model.match(batch["image"])
        allowed = batch["label"][:, None] == classes[None, :]
        score, image = m["scores"].masked_fill(~allowed, float("-inf")).max(dim=0)  # first image on a tie
        better = score > best
        if not better.any():
            continue
        best = torch.where(better, score, best)
        proto = better.nonzero()[:, 0]
        img = image[proto]
        cells = m["cells"][img, proto]  # [n, K]
        tokens = m["latent"].flatten(2)[img[:, None], :, cells]  # [n, K, D]
        vectors[proto] = torch.where(kept[proto][:, None, :], tokens.transpose(1, 2).float(), 0.0)
        cells_at[proto] = cells.masked_fill(~kept[proto], -1)
        first = cells.gather(1, kept[proto].float().argmax(1, keepdim=True))[:, 0]
        index = batch["index"].to(img.device)[img]
        sources[proto] = torch.stack([index, first // width, first % width], dim=1)
    model.prototype_vectors.copy_(vectors)
    model.prototype_sources.copy_(sources)
    model.prototype_source_cells.copy_(cells_at)
