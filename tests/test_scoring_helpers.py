"""Helpers (not tests) shared by the scoring and pipeline tests: small real models and release manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from galmorph.catalogue.manifest import read_manifest, write_manifest


class TinyNet(torch.nn.Module):
    """A small CNN (untrained, seeded): images 0..1 -> logits."""

    def __init__(self, n_classes: int, bias: list[float] | None = None, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, n_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            if bias is not None:
                self.fc.bias.copy_(torch.tensor(bias))

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(h)


class MirrorAntisymmetric(torch.nn.Module):
    """Chirality-equivariant by construction: logit_CW(x) = f(x), logit_ACW(x) = f(mirror x), other = c.

    Mirroring an image therefore swaps its CW and ACW probabilities exactly."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.f = TinyNet(1, seed=seed)
        self.register_buffer("other", torch.tensor([[-0.5]]))

    def forward(self, x):
        cw = self.f(x)
        acw = self.f(torch.flip(x, dims=[3]))
        return torch.cat([cw, acw, self.other.expand(x.shape[0], 1)], dim=1)


def register_model(module, task: str, classes: list[str], name: str, image_size: int = 32) -> str:
    """Log ``module`` to the active tracking server through the platform's model contract; return its URI."""
    import mlflow

    from galmorph.models.io import ModelSpec, log_model

    spec = ModelSpec(task=task, classes=classes, arch=type(module).__name__, image_size=image_size)
    mlflow.set_experiment("test-scoring-models")
    with mlflow.start_run():
        info = log_model(module.eval(), spec, registered_model_name=name)
    return f"models:/{name}/{info.registered_model_version}"


def replicate_manifest(manifest: str | Path, out: str | Path, n_rows: int) -> Path:
    """A release manifest of ``n_rows`` rows cycling over the images of ``manifest`` (unique ids)."""
    df = read_manifest(manifest)
    idx = np.arange(n_rows) % len(df)
    big = df.iloc[idx].reset_index(drop=True)
    big["object_id"] = [f"{o}-r{i:06d}" for i, o in enumerate(big["object_id"])]
    return write_manifest(big, out, kind="release")


def add_broken_images(manifest: str | Path, out: str | Path, tmp: Path) -> tuple[Path, list[str]]:
    """Append a zero-byte image and a truncated JPEG to a manifest; return it and their ids."""
    df = read_manifest(manifest)
    zero = tmp / "zero.jpg"
    zero.write_bytes(b"")
    good = Path(str(df["image_uri"].iloc[0]))
    trunc = tmp / "truncated.jpg"
    trunc.write_bytes(good.read_bytes()[:200])
    extra = df.iloc[:2].copy()
    extra["object_id"] = ["broken-zero", "broken-truncated"]
    extra["image_uri"] = [str(zero), str(trunc)]
    out_df = pd.concat([df, extra], ignore_index=True)
    return write_manifest(out_df, out, kind="release"), ["broken-zero", "broken-truncated"]


def mirror_release(manifest: str | Path, out_dir: Path) -> Path:
    """Write left-right mirrored copies of every image and a manifest pointing at them."""
    from PIL import Image

    df = read_manifest(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    uris = []
    for oid, uri in zip(df["object_id"], df["image_uri"]):
        p = out_dir / f"{oid}-mirror.png"
        Image.open(str(uri)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(p)
        uris.append(str(p))
    df = df.copy()
    df["image_uri"] = uris
    return write_manifest(df, out_dir / "manifest.parquet", kind="release-mirrored")


def count_decodes(monkeypatch) -> list[str]:
    """From now on, every image ``galmorph.datasets.images.load_image`` decodes is appended to the returned list."""
    import galmorph.datasets.images as images

    calls: list[str] = []
    real = images.load_image

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(images, "load_image", counting)
    return calls
