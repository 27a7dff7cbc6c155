"""Networks that satisfy the galmorph model contract (0..1 images in, logits out, normalisation inside).

``build_network(params)`` returns a :class:`~galmorph.models.layers.GalaxyNet` for any architecture in
:data:`ARCHS`, wrapped in :class:`ChiralityEquivariant` when asked.
Encoders are timm models created with ``pretrained=False`` (never downloaded); Zoobot-style encoder
weights can be loaded from a local checkpoint or an MLflow URI.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from galmorph.models.layers import (IMAGENET_MEAN, IMAGENET_STD, GalaxyNet, Normalize, dense_head,  # noqa: F401
                                    zoobot_head)
from galmorph.models.params import ARCHS, NetworkParams, as_network_params  # noqa: F401

log = logging.getLogger(__name__)


def _timm(name: str, in_chans: int, **kw: Any) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kw)


# ----------------------------------------------------------------------------------------------
# encoder weights
# ----------------------------------------------------------------------------------------------
def _resolve_checkpoint_path(ref: str) -> Path:
    """A local file for ``ref``: a path, or an MLflow URI (``runs:/``, ``models:/``, ``mlflow-artifacts:``)
    downloaded with ``mlflow.artifacts.download_artifacts`` (first ``.pt/.pth/.ckpt/.bin/.safetensors``
    file when it is a folder)."""
    p = Path(ref).expanduser()
    if p.exists():
        local = p
    elif ":" in ref:
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(ref))
    else:
        raise FileNotFoundError(f"encoder checkpoint {ref!r} does not exist (not a file, not an MLflow URI)")
    if local.is_dir():
        cands = sorted(q for q in local.rglob("*") if q.suffix in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"))
        if not cands:
            raise FileNotFoundError(f"encoder checkpoint {ref!r}: no .pt/.pth/.ckpt/.bin/.safetensors file in {local}")
        local = cands[0]
    return local


def load_encoder_weights(encoder: nn.Module, ref: str) -> dict[str, int]:
    """Load encoder weights from a local checkpoint or MLflow URI into ``encoder``.

    Accepts a plain state dict, a Lightning checkpoint (``state_dict``) or a Zoobot checkpoint; key
    prefixes such as ``encoder.``, ``model.``, ``net.encoder.`` are stripped. Raises when no tensor
    matches (wrong architecture); returns counts of loaded/missing/unexpected keys.
    """
    path = _resolve_checkpoint_path(ref)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"encoder checkpoint {path}: expected a state dict, got {type(state).__name__}")
    target = encoder.state_dict()
    best: dict[str, torch.Tensor] = {}
    for prefix in ("", "encoder.", "model.", "net.encoder.", "model.encoder.", "net.inner.encoder.",
                   "module.encoder.", "module."):
        cand = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        cand = {k: v for k, v in cand.items() if k in target and tuple(target[k].shape) == tuple(v.shape)}
        if len(cand) > len(best):
            best = cand
    if not best:
        raise ValueError(f"encoder checkpoint {path}: no tensor matches the encoder (wrong architecture?)")
    res = encoder.load_state_dict(best, strict=False)
    counts = {"loaded": len(best), "missing": len(res.missing_keys), "unexpected": len(state) - len(best)}
    log.info("encoder weights from %s: %s", path, counts)
    return counts


# ----------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------
def build_zoobot(n_classes: int, in_chans: int, dropout: float = 0.2, encoder_checkpoint: str = ""
                 ) -> tuple[GalaxyNet, str]:
    """ConvNeXt-nano encoder + Zoobot head; returns ``(net, encoder_init)`` where ``encoder_init`` is
    ``checkpoint:<ref>`` or ``random``."""
    enc = _timm("convnext_nano", in_chans)
    if encoder_checkpoint:
        load_encoder_weights(enc, encoder_checkpoint)
        init = f"checkpoint:{encoder_checkpoint}"
    else:
        log.warning("Zoobot encoder: no encoder_checkpoint given -> RANDOM initialisation (no pretrained "
                    "Zoobot weights; set encoder_checkpoint to a local file or MLflow URI to fine-tune them)")
        init = "random"
    return GalaxyNet(enc, zoobot_head(enc.num_features, n_classes, dropout), in_chans), init


def zoobot_blocks(net: GalaxyNet) -> list[nn.Module]:
    """Encoder blocks from the top (head-side) down: [norm+stage3, stage2, stage1, stage0, stem]."""
    enc = net.encoder
    top = nn.ModuleList([enc.stages[-1], enc.head, enc.norm_pre])
    return [top] + [enc.stages[i] for i in range(len(enc.stages) - 2, -1, -1)] + [enc.stem]


def zoobot_param_groups(net: GalaxyNet, lr: float, finetune_blocks: int, lr_decay: float, weight_decay: float
                        ) -> list[dict]:
    """Zoobot fine-tuning optimiser groups: the head at ``lr``; encoder block ``i`` (0 = top, see
    :func:`zoobot_blocks`) trained at ``lr * lr_decay**i`` when ``i < finetune_blocks``, frozen otherwise."""
    groups = [{"params": list(net.head.parameters()), "lr": lr, "weight_decay": weight_decay, "name": "head"}]
    for i, block in enumerate(zoobot_blocks(net)):
        train = i < finetune_blocks
        for p in block.parameters():
            p.requires_grad_(train)
        if train:
            groups.append({"params": [p for p in block.parameters()], "lr": lr * lr_decay ** i,
                           "weight_decay": weight_decay, "name": f"encoder_block_{i}"})
    return [g for g in groups if g["params"]]


def build_network(params: NetworkParams | Any) -> tuple[nn.Module, dict[str, str]]:
    """The network for :class:`~galmorph.models.params.NetworkParams` (or an object with
    ``network_params()``, such as a training config); returns ``(net, tags)`` where ``tags`` describe
    the initialisation (e.g. ``encoder_init=random``)."""
    from galmorph.models.chirality import ChiralityEquivariant

    cfg = as_network_params(params)
    n, c = len(cfg.classes), cfg.in_chans
    tags: dict[str, str] = {}
    if cfg.arch == "zoobot_convnext_nano":
        net, init = build_zoobot(n, c, cfg.head_dropout, cfg.encoder_checkpoint)
        tags["encoder_init"] = init
    elif cfg.arch == "efficientnet_b0_frozen":
        enc = _timm("efficientnet_b0", c)
        net = GalaxyNet(enc, dense_head(enc.num_features, n, cfg.head_hidden), c, frozen_encoder=True)
        tags["encoder_init"] = "random"
    elif cfg.arch == "efficientnetv2_m_finetune":
        enc = _timm("tf_efficientnetv2_m", c)
        net = GalaxyNet(enc, dense_head(enc.num_features, n, cfg.head_hidden), c)
        tags["encoder_init"] = "random"
    elif cfg.arch in ("resnet18", "resnet50"):
        enc = _timm(cfg.arch, c)
        net = GalaxyNet(enc, nn.Linear(enc.num_features, n), c)
        tags["encoder_init"] = "random"
    elif cfg.arch in ("gresnet18", "gresnet50"):
        from galmorph.models.gresnet import GResNet

        if cfg.task == "chirality" and cfg.reflections:
            raise ValueError("reflection-equivariant G-ResNet refused for chirality (a reflection swaps CW/ACW)")
        net = GResNet(depth=int(cfg.arch[len("gresnet"):]), n_classes=n, in_chans=c, group_order=cfg.group_order,
                      reflections=cfg.reflections, width=cfg.gresnet_width)
        tags["encoder_init"] = "random"
    else:
        raise ValueError(f"unknown arch {cfg.arch!r}")
    if cfg.arch != "zoobot_convnext_nano" and cfg.encoder_checkpoint:
        load_encoder_weights(net.encoder if hasattr(net, "encoder") else net, cfg.encoder_checkpoint)
        tags["encoder_init"] = f"checkpoint:{cfg.encoder_checkpoint}"
    if cfg.chirality_equivariant:
        net = ChiralityEquivariant(net)
    return net, tags


def export_plain(net: nn.Module) -> nn.Module:
    """A plain-torch, eval-mode copy suitable for ``torch.export`` (escnn modules exported)."""
    import copy

    from galmorph.models.chirality import ChiralityEquivariant
    from galmorph.models.gresnet import GResNet

    net = net.eval()
    if isinstance(net, ChiralityEquivariant):
        return ChiralityEquivariant(export_plain(net.backbone)).eval()
    if isinstance(net, GResNet):
        return net.export().eval()
    return copy.deepcopy(net).eval()
