"""Turning a loaded image into model input: centre crop, resize, channels. Shared by training,
evaluation and scoring so that all three see identical pixels."""

from __future__ import annotations

import numpy as np


def centre_crop(img: np.ndarray, fraction: float = 1.0, size: int | None = None) -> np.ndarray:
    """Central crop keeping ``fraction`` of the side (or exactly ``size`` pixels)."""
    h, w = img.shape[:2]
    if size is None:
        if not 0 < fraction <= 1:
            raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
        size_h, size_w = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    else:
        size_h = size_w = int(size)
        if size_h > min(h, w):
            raise ValueError(f"crop of {size} px larger than the {h}x{w} image")
    top, left = (h - size_h) // 2, (w - size_w) // 2
    return img[top : top + size_h, left : left + size_w]


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased) resize to ``size`` x ``size`` of a float image."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    # planar (contiguous NCHW) input: the antialiased kernel is ~1.5-2x slower on the HWC view, same values
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None].contiguous()
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    out = t[0, 0] if img.ndim == 2 else t[0].permute(1, 2, 0)
    return out.numpy()


def to_channels(img: np.ndarray, in_chans: int) -> np.ndarray:
    """Return ``(C, H, W)`` float32 with C = ``in_chans`` (grey is repeated, colour averaged)."""
    if img.ndim == 2:
        img = img[..., None]
    c = img.shape[2]
    if in_chans == 1 and c != 1:
        img = img.mean(axis=2, keepdims=True)
    elif in_chans == 3 and c == 1:
        img = np.repeat(img, 3, axis=2)
    elif in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def prepare_image(img: np.ndarray, image_size: int, in_chans: int = 3, crop_fraction: float = 1.0) -> np.ndarray:
    """Loaded image (0..1) -> model input ``(C, image_size, image_size)`` float32."""
    if crop_fraction < 1.0:
        img = centre_crop(img, crop_fraction)
    img = resize(img, image_size)
    return to_channels(img, in_chans)
