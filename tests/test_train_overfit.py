"""A small real batch (16 GZ1 chirality images) can be over-fitted: the training loss falls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from galmorph.datasets.datamodule import TaskImageDataset
from galmorph.models.classifier import GalaxyClassifier
from galmorph.training.config import resolve_config

pytestmark = pytest.mark.realdata


def test_small_real_batch_overfits(data_root):
    from galmorph.catalogue.ingest import ingest_gz1_chirality

    man, _ = ingest_gz1_chirality(data_root / "gz1_chirality" / "labels.csv", data_root / "gz1_chirality" / "images",
                                  data_root=data_root)
    batch = (man.groupby("label", group_keys=False).apply(lambda g: g.head(6)).head(16)
             if len(man) else man)
    assert len(batch) == 16 and batch["label"].nunique() == 3
    cfg = resolve_config("chirality", "tiny", {"image_size": 48, "lr": 1e-3})
    ds = TaskImageDataset(batch, cfg.classes(), cfg.image_size, 3, 1.0, data_root=data_root)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    torch.manual_seed(0)
    model = GalaxyClassifier(cfg.to_dict())
    opt = model.configure_optimizers()
    model.train()
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.25 * losses[0], losses
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.9
