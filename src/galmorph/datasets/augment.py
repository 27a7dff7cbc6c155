"""Per-task image augmentation on prepared tensors ``(C, S, S)`` in 0..1.

One random affine map per image: rotation, isotropic zoom and (optionally) flips, applied with
bilinear resampling. The sampled 2x2 matrix is exposed so that tests can check that an augmentation
never mirrors (``det > 0``) — mandatory for chirality, where a mirror image swaps CW and ACW. Mirrors
for chirality come only with their label swapped (:class:`RandomMirrorSwap`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    rotation_deg: float = 180.0
    zoom: float = 0.1
    flips: bool = True

    @property
    def enabled(self) -> bool:
        return self.rotation_deg > 0 or self.zoom > 0 or self.flips


def augment_spec_for(task: str, rotation_deg: float, zoom: float, flips: bool) -> AugmentSpec:
    """The augmentation of ``task``; refuses flips for chirality (they swap CW and ACW)."""
    if task == "chirality" and flips:
        raise ValueError("chirality augmentation must not flip images (a mirror image swaps CW and ACW)")
    return AugmentSpec(float(rotation_deg), float(zoom), bool(flips))


def sample_matrix(spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    """A random 2x2 map ``flip @ zoom * rotation`` (output pixel -> input pixel, normalised coords)."""
    theta = math.radians(rng.uniform(-spec.rotation_deg, spec.rotation_deg)) if spec.rotation_deg > 0 else 0.0
    scale = rng.uniform(1 - spec.zoom, 1 + spec.zoom) if spec.zoom > 0 else 1.0
    c, s = math.cos(theta), math.sin(theta)
    m = np.array([[c, -s], [s, c]]) / scale  # zoom in (scale > 1) samples a smaller input region
    if spec.flips:
        fx = -1.0 if rng.uniform() < 0.5 else 1.0
        fy = -1.0 if rng.uniform() < 0.5 else 1.0
        m = m @ np.diag([fx, fy])
    return m


def apply_matrix(x: torch.Tensor, m: np.ndarray) -> torch.Tensor:
    """Resample ``x`` (C,S,S) with the 2x2 map ``m`` about the image centre (zeros outside)."""
    theta = torch.zeros(1, 2, 3, dtype=torch.float32)
    theta[0, :, :2] = torch.as_tensor(m, dtype=torch.float32)
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    out = F.grid_sample(x[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out.clamp_(0.0, 1.0)


class RandomGalaxyAugment:
    """Callable ``(C,S,S) tensor -> (C,S,S) tensor`` with its own seeded generator.

    The generator is re-seeded per DataLoader worker (see :func:`worker_init`) so that runs repeat.
    """

    def __init__(self, spec: AugmentSpec, seed: int = 0):
        self.spec = spec
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spec.enabled:
            return x
        return apply_matrix(x, sample_matrix(self.spec, self.rng))


def mirror(x: torch.Tensor) -> torch.Tensor:
    """Left-right mirror of a ``(..., H, W)`` tensor (the same flip the CE model uses)."""
    return torch.flip(x, dims=[-1])


class RandomMirrorSwap:
    """Callable ``(x (C,S,S), label index) -> (x, label)``: with probability ``p`` the image is
    mirrored left-right and its label mapped through ``label_map`` (chirality: CW <-> ACW), so the
    training set covers both handednesses with correct labels (never reflection invariance)."""

    def __init__(self, label_map: list[int] | tuple[int, ...], p: float = 0.5, seed: int = 0):
        if sorted(label_map) != list(range(len(label_map))):
            raise ValueError(f"RandomMirrorSwap: label_map {list(label_map)} is not a permutation of the classes")
        self.label_map = tuple(int(v) for v in label_map)
        self.p = float(p)
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor, label: int) -> tuple[torch.Tensor, int]:
        if self.rng.uniform() < self.p:
            return mirror(x), self.label_map[int(label)]
        return x, int(label)
