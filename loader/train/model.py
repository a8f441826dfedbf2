"""The example job's model and its on-device augmentation."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN", "random_flip"]


class SmallCNN(nn.Module):
    """Four conv blocks and a linear head: small enough for a CPU, enough for the sample data."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, width * 2, width * 4, width * 4):
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of ``[B, C, H, W]`` left-right with probability 1/2, in one batched op."""
    mask = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(mask[:, None, None, None], images.flip(3), images)
