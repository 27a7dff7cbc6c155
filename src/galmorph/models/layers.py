"""Building blocks shared by every network: input normalisation, the ``normalize -> encoder -> head``
network and the heads. No other galmorph model module is imported here (no cycles)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(in_chans: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` for ``in_chans`` channels from RGB (or per-channel) values; one channel
    gets the average of the RGB values. Defaults: ImageNet."""
    mean = tuple(float(v) for v in (IMAGENET_MEAN if mean is None else mean))
    std = tuple(float(v) for v in (IMAGENET_STD if std is None else std))
    if len(mean) != len(std):
        raise ValueError(f"normalisation: mean {mean} and std {std} have different lengths")
    if len(mean) == in_chans:
        return mean, std
    if in_chans == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    if len(mean) == 1:
        return mean * in_chans, std * in_chans
    raise ValueError(f"normalisation: {len(mean)} channel values for in_chans={in_chans}")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (inputs scaled 0..1); ImageNet values unless given."""

    def __init__(self, in_chans: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        mean, std = channel_stats(in_chans, mean, std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def values(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` as lists (what the ModelSpec records)."""
        return self.mean.flatten().tolist(), self.std.flatten().tolist()


class GalaxyNet(nn.Module):
    """``normalize -> encoder -> head``: (B,C,S,S) in 0..1 -> logits (B, n_classes).

    ``frozen_encoder=True`` keeps the encoder's weights fixed and its batch norm in eval mode.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, in_chans: int, frozen_encoder: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.normalize = Normalize(in_chans, mean, std)
        self.encoder = encoder
        self.head = head
        self.frozen_encoder = frozen_encoder
        if frozen_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "GalaxyNet":
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.normalize(x)))


def zoobot_head(in_features: int, n_classes: int, dropout: float = 0.2, hidden: int = 128) -> nn.Sequential:
    """Zoobot-style head after global pooling: Linear 128 -> Dropout -> ReLU -> Linear n."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.Dropout(dropout), nn.ReLU(inplace=False),
                         nn.Linear(hidden, n_classes))


def dense_head(in_features: int, n_classes: int, hidden: int = 1028) -> nn.Sequential:
    """Keras-style head of the arm-number study: Dense(hidden) + ReLU -> Dense(n) (softmax at inference)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=False), nn.Linear(hidden, n_classes))
