"""Helpers for the evaluation / promotion tests (no tests here): small deterministic models that follow
the shared model contract, and a "coded" image set whose pixels carry the truth the models read.

Coded images (16x16 RGB PNG, uniform colour): red = class code ``(k + 0.5) / K``, green = a per-object
uniform number ``u``, blue = ``z / 0.2``. :class:`OracleNet` reads them: it predicts the true class
when ``u >= error_rate`` and the next class otherwise (so its accuracy is the fraction of ``u >=
error_rate``), with a confidence that grows with ``|u - error_rate|``; inside ``bad_z`` (a redshift
range) it is always wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from galmorph.imaging.io import save_raster
from galmorph.catalogue.manifest import assign_z_bin, write_manifest

CODED_SIZE = 16


def write_coded_dataset(out: Path, classes, n: int = 60, seed: int = 0,
                        z_bins=((0.01, 0.03), (0.03, 0.05), (0.05, 0.07), (0.07, 0.10))) -> tuple[Path, pd.DataFrame]:
    """Write ``n`` coded PNGs + a labelled manifest; returns ``(manifest path, truth table)``."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    k = len(classes)
    rows = []
    for i in range(n):
        c = i % k
        u = float(rng.integers(0, 256)) / 255.0
        lo, hi = z_bins[(i // k) % len(z_bins)]
        z = float(rng.uniform(lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo)))
        img = np.empty((CODED_SIZE, CODED_SIZE, 3), dtype=np.float32)
        img[..., 0] = (c + 0.5) / k
        img[..., 1] = u
        img[..., 2] = z / 0.2
        p = out / "img" / f"obj{i:04d}.png"
        save_raster(img, p)
        rows.append({"object_id": f"obj{i:04d}", "survey": "test", "ra": 10.0 + i * 0.01, "dec": 1.0, "z": z,
                     "image_uri": str(p), "label": str(classes[c]), "task": "test", "provenance": "coded",
                     "u": u})
    df = pd.DataFrame(rows)
    df["z_bin"] = assign_z_bin(df["z"])
    path = write_manifest(df, out / "manifest.parquet", kind="test-coded")
    return path, df


class OracleNet(nn.Module):
    """Reads the coded pixels (see module docstring) and returns logits; deterministic, exportable."""

    def __init__(self, n_classes: int, error_rate: float = 0.0, bad_z: tuple[float, float] | None = None,
                 scale: float = 8.0, dropout: float = 0.0):
        super().__init__()
        self.k = n_classes
        self.error_rate = float(error_rate)
        self.bad_z = bad_z
        self.scale = scale
        self.drop = nn.Dropout(dropout)
        self.register_buffer("ar", torch.arange(n_classes, dtype=torch.float32))

    def forward(self, x):
        r = x[:, 0].mean(dim=(1, 2))
        g = x[:, 1].mean(dim=(1, 2))
        b = x[:, 2].mean(dim=(1, 2)) * 0.2
        true = torch.clamp(torch.floor(r * self.k), 0, self.k - 1)
        margin = g - self.error_rate + 0.5 / 255
        if self.bad_z is not None:
            inside = ((b >= self.bad_z[0]) & (b < self.bad_z[1])).float()
            margin = margin * (1 - inside) - (0.5 + g) * inside
        alt = torch.remainder(true + 1, self.k)
        onehot_true = (self.ar[None, :] == true[:, None]).float()
        onehot_alt = (self.ar[None, :] == alt[:, None]).float()
        logits = self.scale * margin[:, None] * onehot_true - 3.0 * (1 - onehot_true - onehot_alt)
        return self.drop(logits)


class TinyCNN(nn.Module):
    """A small random convolutional net with ``n_out`` outputs (and optional dropout)."""

    def __init__(self, n_out: int, in_chans: int = 3, width: int = 6, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, n_out))

    def forward(self, x):
        return self.head(self.features(x))


class ChiralityCE(nn.Module):
    """A chirality-equivariant wrapper: logits ``[a(x), a(mirror x), (o(x) + o(mirror x)) / 2]`` for the
    classes CW, ACW, other, where ``(a, o)`` are the two outputs of a small net."""

    def __init__(self, seed: int = 0, dropout: float = 0.0):
        super().__init__()
        self.net = TinyCNN(2, seed=seed, dropout=dropout)

    def forward(self, x):
        f = self.net(x)
        fm = self.net(torch.flip(x, dims=[3]))
        return torch.stack([f[:, 0], fm[:, 0], (f[:, 1] + fm[:, 1]) / 2], dim=1)


def log_test_model(module, task: str, classes, image_size: int, registered_name: str | None = None,
                   experiment: str = "test-evaluation", chirality_equivariant: bool = False, arch: str = "test"):
    """Log ``module`` with the shared contract (pt2) in a new run; returns mlflow's ModelInfo."""
    import mlflow

    from galmorph.models.io import ModelSpec, log_model

    spec = ModelSpec(task=task, classes=list(classes), arch=arch, image_size=image_size, in_chans=3,
                     chirality_equivariant=chirality_equivariant)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"log-{arch}"):
        return log_model(module.eval(), spec, registered_model_name=registered_name)
