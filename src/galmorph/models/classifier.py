"""``GalaxyClassifier``: the one LightningModule family for all tasks and architectures.

It is built from :class:`~galmorph.models.params.NetworkParams` (saved as hyper-parameters, so
``GalaxyClassifier.load_from_checkpoint(path)`` rebuilds the same network) and wraps the network from
:func:`galmorph.models.networks.build_network` -- named options select the architecture
(``arch``: a named arch or any timm model name, see :mod:`galmorph.models.archs`), the
chirality-equivariant wrapper (``chirality_equivariant``), Zoobot fine-tuning
(``finetune_blocks``, ``lr_decay``), class weights of the loss, and so on. The training layer builds
the parameters from its config (``TrainConfig.network_params()``); the model layer never imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from galmorph.models.archs import arch_info
from galmorph.models.networks import GalaxyNet, build_network, export_plain, zoobot_param_groups
from galmorph.models.params import NetworkParams

log = logging.getLogger(__name__)


class GalaxyClassifier(L.LightningModule):
    """Cross-entropy classifier over ``params.classes``; ``self.net`` follows the model contract.

    ``params``: :class:`NetworkParams` or a mapping of its fields (a flat training-config dict is
    accepted too, see :meth:`NetworkParams.from_mapping`).
    """

    def __init__(self, params: NetworkParams | Mapping[str, Any]):
        super().__init__()
        p = params if isinstance(params, NetworkParams) else NetworkParams.from_mapping(params)
        self.save_hyperparameters({"params": p.to_dict()})
        self.params = p
        self.classes = list(p.classes)
        self.arch_info = arch_info(p.arch)  # what the arch is (never compare names)
        self.net, self.init_tags = build_network(p)
        self.val_labels: list[tuple[torch.Tensor, torch.Tensor]] = []  # (true, predicted) per val batch
        weights = torch.tensor(p.class_weights, dtype=torch.float32) if p.class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        if self.arch_info.layerwise_finetune:  # Zoobot: freeze all but the top finetune_blocks now
            zoobot_param_groups(self._base_net(), p.lr, p.finetune_blocks, p.lr_decay, p.weight_decay)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        weight = self.class_weights if stage == "train" else None
        loss = F.cross_entropy(logits.float(), y, weight=weight)
        pred = logits.argmax(dim=1)
        acc = (pred == y).float().mean()
        if stage == "val":  # kept for epoch-level metrics (the training layer's macro-F1 monitor)
            self.val_labels.append((y.detach().cpu(), pred.detach().cpu()))
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def on_validation_epoch_start(self) -> None:
        self.val_labels = []

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _base_net(self):
        net = self.net
        return net.backbone if hasattr(net, "backbone") else net

    def configure_optimizers(self):
        p = self.params
        if self.arch_info.layerwise_finetune:
            base = self._base_net()
            assert isinstance(base, GalaxyNet)
            groups = zoobot_param_groups(base, p.lr, p.finetune_blocks, p.lr_decay, p.weight_decay)
            for g in groups:
                g.pop("name", None)
        else:
            groups = [{"params": [q for q in self.net.parameters() if q.requires_grad], "lr": p.lr,
                       "weight_decay": p.weight_decay}]
        if p.optimizer == "adam":
            return torch.optim.Adam(groups, lr=p.lr, weight_decay=p.weight_decay)
        if p.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=p.lr, weight_decay=p.weight_decay)
        return torch.optim.SGD(groups, lr=p.lr, momentum=0.9, weight_decay=p.weight_decay)

    def trainable_parameters(self) -> int:
        return sum(q.numel() for q in self.net.parameters() if q.requires_grad)

    def export_for_inference(self) -> torch.nn.Module:
        """Plain-torch eval-mode network for :func:`galmorph.models.io.log_model` (pt2)."""
        return export_plain(self.net)
