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


#: Test-time view counts of :class:`ChiralityViews`: the image; + its mirror; 4 rotations x mirror.
VIEW_COUNTS = (1, 2, 8)


def swap_cw_acw(z: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, 3)`` with the CW and ACW columns exchanged (what a mirror does to the truth)."""
    return z[:, [ACW, CW, OTHER]]


class ChiralityViewsError(ValueError):
    """Unsupported number of test-time views."""


class ChiralityViews(nn.Module):
    """Chirality-equivariant test-time views: mean logits over ``views`` transformed copies of the
    input, with CW/ACW swapped on the mirrored ones.

    ``views=1``: the backbone alone; ``2``: image + mirror; ``8``: the 4 rotations by 90 degrees of
    the image and of its mirror. For 2 and 8 views, mirroring the input swaps the CW and ACW outputs
    and (8 views) a 90-degree rotation leaves them unchanged -- exactly, because the rotated / mirrored
    input permutes the same views and the sum is taken in an order that the permutation preserves.
    """

    def __init__(self, backbone: nn.Module, views: int = 8):
        super().__init__()
        if views not in VIEW_COUNTS:
            raise ChiralityViewsError(f"ChiralityViews: views must be one of {VIEW_COUNTS}, got {views}")
        self.backbone = backbone
        self.views = int(views)

    def _pair(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x) + swap_cw_acw(self.backbone(torch.flip(x, dims=[3])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.views == 1:
            return self.backbone(x)
        if self.views == 2:
            return 0.5 * self._pair(x)
        p = [self._pair(torch.rot90(x, k, dims=[2, 3])) for k in range(4)]
        # (p0 + p2) + (p1 + p3): a rotation maps it to (p1 + p3) + (p2 + p0), a mirror to
        # (p0 + p2) + (p3 + p1) (swapped) -- the same sums up to commutativity, so equal bit for bit
        return 0.125 * ((p[0] + p[2]) + (p[1] + p[3]))
