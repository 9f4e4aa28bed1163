"""The multi-task model: one shared backbone, one head per task (hard parameter sharing)."""

from typing import Any

from torch import Tensor, nn


class MultiTaskModel(nn.Module):
    """Shared backbone -> {task name: head output}.

    `forward` also returns the shared features, which weighting methods that work on the
    shared representation (e.g. MGDA-UB) differentiate against.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Any]]:
        features = self.backbone(images)
        return features, {name: head(features) for name, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]
