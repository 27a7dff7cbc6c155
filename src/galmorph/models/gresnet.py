"""G-ResNet18/50: rotation-equivariant ResNets built with escnn (C_N, regular representations).

Features are regular fields of the rotation group C_N (``group_order``, default 8) -- or of D_N when
``reflections=True``, which is refused for the chirality task because a reflection maps CW onto ACW.
Group (max) pooling before the classifier makes the prediction invariant; global average pooling and
a linear layer follow. Inputs are resized internally (bilinear, ``align_corners=True``) to the nearest
``32k + 1`` pixels so that every stride-2 layer samples a grid that is symmetric under 90-degree
rotations; predictions are then invariant to 90-degree rotations of the input up to float rounding.

:meth:`GResNet.export` returns a plain-torch copy (escnn ``.export()`` of each layer, no escnn
dependency at inference) used for ``torch.export`` and MLflow logging.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from galmorph.models.layers import Normalize


def equivariant_size(size: int) -> int:
    """Smallest ``32k + 1 >= size`` (odd at the input of each of the five stride-2 stages)."""
    return int(math.ceil(max(size - 1, 1) / 32) * 32 + 1)


class GroupMaxPool(nn.Module):
    """Plain-torch group pooling: max over the ``group_size`` channels of each regular field."""

    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = int(group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, c // self.group_size, self.group_size, h, w).amax(dim=2)


class _PlainBlock(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module | None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.body(x) + s)


class _GBlock(nn.Module):
    """Residual block on escnn GeometricTensors (basic: 3x3-3x3; bottleneck: 1x1-3x3-1x1)."""

    def __init__(self, gspace, in_type, mid_fields: int, out_fields: int, stride: int, bottleneck: bool):
        super().__init__()
        import escnn.nn as enn

        reg = gspace.regular_repr
        mid = enn.FieldType(gspace, [reg] * mid_fields)
        out = enn.FieldType(gspace, [reg] * out_fields)
        if bottleneck:
            layers = [enn.R2Conv(in_type, mid, 1, bias=False), enn.InnerBatchNorm(mid), enn.ReLU(mid),
                      enn.R2Conv(mid, mid, 3, padding=1, stride=stride, bias=False), enn.InnerBatchNorm(mid),
                      enn.ReLU(mid), enn.R2Conv(mid, out, 1, bias=False), enn.InnerBatchNorm(out)]
        else:
            layers = [enn.R2Conv(in_type, out, 3, padding=1, stride=stride, bias=False), enn.InnerBatchNorm(out),
                      enn.ReLU(out), enn.R2Conv(out, out, 3, padding=1, bias=False), enn.InnerBatchNorm(out)]
        self.body = enn.SequentialModule(*layers)
        self.shortcut = None
        if stride != 1 or in_type.size != out.size:
            self.shortcut = enn.SequentialModule(enn.R2Conv(in_type, out, 1, stride=stride, bias=False),
                                                 enn.InnerBatchNorm(out))
        self.relu = enn.ReLU(out)
        self.out_type = out

    def forward(self, x):
        s = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.body(x) + s)

    def export(self) -> _PlainBlock:
        self.eval()
        return _PlainBlock(self.body.export(), None if self.shortcut is None else self.shortcut.export())


class GResNet(nn.Module):
    """Equivariant ResNet (depth 18 or 50): (B,C,S,S) in 0..1 -> logits (B, n_classes)."""

    def __init__(self, depth: int = 18, n_classes: int = 3, in_chans: int = 3, group_order: int = 8,
                 reflections: bool = False, width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        import escnn.gspaces as gspaces
        import escnn.nn as enn

        if depth not in (18, 50):
            raise ValueError(f"G-ResNet depth must be 18 or 50, got {depth}")
        self.depth, self.group_order, self.reflections = depth, group_order, reflections
        self.gspace = gspaces.flipRot2dOnR2(group_order) if reflections else gspaces.rot2dOnR2(group_order)
        gsize = self.gspace.fibergroup.order()
        self.in_type = enn.FieldType(self.gspace, [self.gspace.trivial_repr] * in_chans)
        # keep the parameter count near the plain ResNet's: fields = planes * width / sqrt(|G|)
        def fields(planes: int) -> int:
            return max(1, int(round(planes * width / math.sqrt(gsize))))

        self.normalize = Normalize(in_chans)
        stem_t = enn.FieldType(self.gspace, [self.gspace.regular_repr] * fields(64))
        self.stem = enn.SequentialModule(enn.R2Conv(self.in_type, stem_t, 7, padding=3, stride=2, bias=False),
                                         enn.InnerBatchNorm(stem_t), enn.ReLU(stem_t))
        bottleneck = depth == 50
        counts = (2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3)
        expansion = 4 if bottleneck else 1
        blocks: list[_GBlock] = []
        t = stem_t
        for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
            for b in range(n):
                stride = 2 if (stage > 0 and b == 0) else 1
                blk = _GBlock(self.gspace, t, fields(planes), fields(planes * expansion), stride, bottleneck)
                blocks.append(blk)
                t = blk.out_type
        self.blocks = nn.ModuleList(blocks)
        self.gpool = enn.GroupPooling(t)
        self.num_features = len(t)
        # head dropout (> 0: what MC dropout switches on); at 0 the bare Linear, as before
        self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, n_classes)) if dropout > 0 \
            else nn.Linear(self.num_features, n_classes)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        s = equivariant_size(x.shape[-1])
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import escnn.nn as enn

        x = self._resize(self.normalize(x))
        g = self.stem(enn.GeometricTensor(x, self.in_type))
        g = enn.GeometricTensor(F.max_pool2d(g.tensor, 3, 2, 1), g.type)
        for blk in self.blocks:
            g = blk(g)
        h = self.gpool(g).tensor
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    def export(self) -> "PlainGResNet":
        """Plain-torch copy for inference (escnn layers exported, eval mode)."""
        self.eval()
        return PlainGResNet(copy.deepcopy(self.normalize), self.stem.export(),
                            nn.ModuleList([b.export() for b in self.blocks]),
                            GroupMaxPool(self.gspace.fibergroup.order()), copy.deepcopy(self.fc)).eval()


class PlainGResNet(nn.Module):
    """The exported G-ResNet: same function as :class:`GResNet` in eval mode, plain torch only."""

    def __init__(self, normalize: nn.Module, stem: nn.Module, blocks: nn.ModuleList, gpool: nn.Module, fc: nn.Module):
        super().__init__()
        self.normalize, self.stem, self.blocks, self.gpool, self.fc = normalize, stem, blocks, gpool, fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = equivariant_size(x.shape[-1])
        x = F.interpolate(self.normalize(x), size=(s, s), mode="bilinear", align_corners=True)
        h = F.max_pool2d(self.stem(x), 3, 2, 1)
        for blk in self.blocks:
            h = blk(h)
        h = self.gpool(h)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
