"""A torch Dataset over a manifest's images (shared by training, evaluation and scoring)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from galmorph.imaging.io import ImageError, load_image
from galmorph.imaging.preprocess import prepare_image
from galmorph.manifest import ManifestError, resolve_image_uri


class ManifestImageDataset(Dataset):
    """Items are ``(image tensor (C,S,S), label index or -1, row position)``.

    Unreadable images raise :class:`ImageError` naming the object; callers that must not lose rows
    (scoring) catch it per item via ``on_error="skip"``, which returns ``None`` for the image and
    records the reason in ``self.errors`` (in that worker) -- use :func:`collate_skip` then.
    """

    def __init__(self, manifest: pd.DataFrame, image_size: int, in_chans: int = 3, crop_fraction: float = 1.0,
                 classes: list[str] | tuple[str, ...] | None = None, data_root: Path | str | None = None,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None, on_error: str = "raise"):
        self.df = manifest.reset_index(drop=True)
        self.image_size, self.in_chans, self.crop_fraction = int(image_size), int(in_chans), float(crop_fraction)
        self.classes = list(classes) if classes is not None else None
        self.class_index = {c: i for i, c in enumerate(self.classes or [])}
        self.data_root = data_root
        self.transform = transform
        if on_error not in ("raise", "skip"):
            raise ValueError("on_error must be 'raise' or 'skip'")
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.df)

    def label_index(self, i: int) -> int:
        if self.classes is None:
            return -1
        lab = self.df.at[i, "label"] if "label" in self.df.columns else None
        if lab is None or pd.isna(lab):
            return -1
        if lab not in self.class_index:
            raise ManifestError(f"object {self.df.at[i, 'object_id']}: label {lab!r} not in classes {self.classes}")
        return self.class_index[lab]

    def load(self, i: int) -> np.ndarray:
        row = self.df.iloc[i]
        try:
            path = resolve_image_uri(row["image_uri"], self.data_root)
            img = load_image(path)
        except (ImageError, ManifestError) as exc:
            raise ImageError(f"object {row['object_id']}: {exc}") from exc
        return img

    def __getitem__(self, i: int):
        try:
            img = self.load(i)
        except ImageError as exc:
            if self.on_error == "raise":
                raise
            return None, -1, i, str(exc)
        x = prepare_image(img, self.image_size, self.in_chans, self.crop_fraction)
        if self.transform is not None:
            x = self.transform(x)
        return torch.from_numpy(np.ascontiguousarray(x)), self.label_index(i), i, None


def collate_skip(batch):
    """Collate that keeps failed items apart: returns ``(images, labels, positions, failures)``
    where ``failures`` is a list of ``(position, reason)``."""
    good = [b for b in batch if b[0] is not None]
    failures = [(b[2], b[3]) for b in batch if b[0] is None]
    if good:
        x = torch.stack([b[0] for b in good])
        y = torch.tensor([b[1] for b in good], dtype=torch.long)
        pos = torch.tensor([b[2] for b in good], dtype=torch.long)
    else:
        x, y, pos = torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return x, y, pos, failures
