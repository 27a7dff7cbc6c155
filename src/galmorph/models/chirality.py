"""Chirality-equivariant (CE) prediction around any backbone.

The backbone scores the image ``x`` and its mirror ``m = flip(x)`` (``torch.flip(dims=[3])``) with
logits in the order (CW, ACW, other). The CE output is::

    logit_CW    = f(x)[CW]
    logit_ACW   = f(m)[CW]           # the mirror's clockwise score is the image's anticlockwise score
    logit_other = (f(x)[other] + f(m)[other]) / 2

(softmax at inference, per the model contract). Mirroring the input therefore swaps the CW and ACW
outputs exactly and leaves ``other`` unchanged: P_CW(x) = P_ACW(mirror x) by construction.
"""

from __future__ import annotations

import torch
from torch import nn

CW, ACW, OTHER = 0, 1, 2


class ChiralityEquivariant(nn.Module):
    """CE wrapper: ``(B,C,S,S)`` -> logits ``(B, 3)`` in (CW, ACW, other) order."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone(x)
        zm = self.backbone(torch.flip(x, dims=[3]))
        return torch.stack([z[:, CW], zm[:, CW], 0.5 * (z[:, OTHER] + zm[:, OTHER])], dim=1)
