"""``GalaxyClassifier``: the one LightningModule family for all tasks and architectures.

It is built from a :class:`~galmorph.training.config.TrainConfig` (saved as hyper-parameters, so
``GalaxyClassifier.load_from_checkpoint(path)`` rebuilds the same network) and wraps the network from
:func:`galmorph.models.networks.build_network` -- named options select the architecture
(``arch``), the chirality-equivariant wrapper (``chirality_equivariant``), Zoobot fine-tuning
(``finetune_blocks``, ``lr_decay``), and so on.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from galmorph.models.networks import GalaxyNet, build_network, export_plain, zoobot_param_groups

log = logging.getLogger(__name__)


class GalaxyClassifier(L.LightningModule):
    """Cross-entropy classifier over ``cfg.classes()``; ``self.net`` follows the model contract."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from galmorph.training.config import TrainConfig

        self.save_hyperparameters({"config": dict(config)})
        self.cfg = TrainConfig(**config).validate() if not isinstance(config, TrainConfig) else config
        self.classes = list(self.cfg.classes())
        self.net, self.init_tags = build_network(self.cfg)
        if self.cfg.arch == "zoobot_convnext_nano":  # freeze all but the top finetune_blocks now
            zoobot_param_groups(self._base_net(), self.cfg.lr, self.cfg.finetune_blocks, self.cfg.lr_decay,
                                self.cfg.weight_decay)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _base_net(self):
        net = self.net
        return net.backbone if hasattr(net, "backbone") else net

    def configure_optimizers(self):
        cfg = self.cfg
        if cfg.arch == "zoobot_convnext_nano":
            base = self._base_net()
            assert isinstance(base, GalaxyNet)
            groups = zoobot_param_groups(base, cfg.lr, cfg.finetune_blocks, cfg.lr_decay, cfg.weight_decay)
            for g in groups:
                g.pop("name", None)
        else:
            groups = [{"params": [p for p in self.net.parameters() if p.requires_grad], "lr": cfg.lr,
                       "weight_decay": cfg.weight_decay}]
        if cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def export_for_inference(self) -> torch.nn.Module:
        """Plain-torch eval-mode network for :func:`galmorph.models.io.log_model` (pt2)."""
        return export_plain(self.net)
