"""tinyproto: a small prototype network written against protobench's contract alone (DESIGN.md, the README).

A three-layer CNN, ``prototypes_per_class`` prototypes per class compared with every cell of its grid by
ProtoPNet's similarity log((d + 1) / (d + 1e-4)) of the squared L2 distance d (Chen et al., NeurIPS 2019,
Sec. 2.1), max-pooled over the grid, and a last layer initialised to 1 for a prototype's own class and -0.5
for the others. Trained end to end with cross-entropy only: it is an example of packaging, not a paper's
recipe (no cluster or separation loss, no projection onto training patches).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from protobench import Explanation, ModelSpec, PrototypeModel, TrainData, hookimpl


class TinyProto(PrototypeModel):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        self.num_classes = config["num_classes"]
        size = config["input_size"]  # protobench fills it in from the dataset when the config has none
        self.input_size = (size, size) if isinstance(size, int) else tuple(size)
        channels = config["channels"]
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.Sigmoid(),
        )
        per_class = config["prototypes_per_class"]
        self.register_buffer("prototype_classes", torch.arange(self.num_classes).repeat_interleave(per_class))
        self.prototypes = nn.Parameter(torch.rand(self.num_prototypes, channels))
        own = nn.functional.one_hot(self.prototype_classes, self.num_classes).float()
        self.last_layer = nn.Parameter(own * 1.5 - 0.5)  # [P, C]: 1 own class, -0.5 the others

    def explain(self, x: torch.Tensor) -> Explanation:
        z = self.features(x)  # [B, D, h, w]
        distances = ((z[:, None] - self.prototypes[None, :, :, None, None]) ** 2).sum(dim=2)  # [B, P, h, w]
        similarities = torch.log((distances + 1) / (distances + 1e-4))
        scores = similarities.amax(dim=(2, 3))  # [B, P]
        contributions = scores[:, :, None] * self.last_layer[None]  # [B, P, C]
        return Explanation(logits=contributions.sum(dim=1), similarities=similarities, contributions=contributions)


def train(model: TinyProto, data: TrainData, config: dict[str, Any], progress: Any) -> TinyProto:
    """Adam on cross-entropy, ``epochs`` passes over ``data.train`` (a Dataset of dict items)."""
    loader = torch.utils.data.DataLoader(data.train, batch_size=32, shuffle=True, num_workers=data.num_workers)
    optimiser = torch.optim.Adam(model.parameters(), lr=config["lr"])
    model.train()
    for epoch in range(config["epochs"]):
        for batch in progress(loader, desc=f"tinyproto {epoch + 1}/{config['epochs']}", total=len(loader)):
            optimiser.zero_grad()
            logits = model(batch["image"].to(data.device))
            nn.functional.cross_entropy(logits, batch["label"].to(data.device)).backward()
            optimiser.step()
    return model.eval()


@hookimpl
def protobench_models() -> list[ModelSpec]:
    return [ModelSpec(
        name="tinyproto",
        build=TinyProto,
        train=train,
        default_config={"backbone": "3-layer CNN", "channels": 32, "prototypes_per_class": 2, "epochs": 15,
                        "lr": 3e-3},
        paper="example plugin after Chen et al., NeurIPS 2019 (ProtoPNet), simplified",
    )]
