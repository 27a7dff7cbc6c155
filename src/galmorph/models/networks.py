"""Networks that satisfy the galmorph model contract (0..1 images in, logits out, normalisation inside).

``build_network(params)`` returns a :class:`~galmorph.models.layers.GalaxyNet` for any architecture in
:data:`ARCHS`, wrapped in :class:`ChiralityEquivariant` when asked.
Encoders are timm models created with ``pretrained=False`` (never downloaded); their weights come from
:mod:`galmorph.models.pretrained` (``encoder_weights``: packaged EfficientNet-Lite0, a local file or an
MLflow URI; strict, weights only).
"""

from __future__ import annotations

import logging
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
def load_encoder_weights(encoder: nn.Module, ref: str, strict: bool = True) -> dict[str, int]:
    """Load encoder weights from a local checkpoint or MLflow URI (legacy ``encoder_checkpoint``) into
    ``encoder`` through :mod:`galmorph.models.pretrained` (weights only, prefixes stripped, greyscale
    stem adapted, strict). Returns counts of loaded/missing/unexpected keys."""
    from galmorph.models.pretrained import load_encoder_state, read_state_dict, resolve_encoder_source, \
        spec_from_checkpoint_ref

    source = resolve_encoder_source(spec_from_checkpoint_ref(ref))
    return load_encoder_state(encoder, read_state_dict(source.path), what=f"{ref} ({source.path})", strict=strict)


# ----------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------
def build_zoobot(n_classes: int, in_chans: int, dropout: float = 0.2, encoder_checkpoint: str = ""
                 ) -> tuple[GalaxyNet, str]:
    """ConvNeXt-nano encoder + Zoobot head; returns ``(net, encoder_init)`` (``random`` without weights)."""
    from galmorph.models.pretrained import load_pretrained_encoder, spec_from_checkpoint_ref

    enc = _timm("convnext_nano", in_chans)
    source = load_pretrained_encoder(enc, spec_from_checkpoint_ref(encoder_checkpoint))
    if source.kind == "none":
        log.warning("Zoobot encoder: no encoder weights given -> RANDOM initialisation (no pretrained "
                    "Zoobot weights; set encoder_weights=file:PATH or mlflow:URI to fine-tune them)")
    mean, std = _stats("convnext_nano")
    return GalaxyNet(enc, zoobot_head(enc.num_features, n_classes, dropout), in_chans, mean=mean, std=std), \
        source.encoder_init


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


#: timm encoder of each timm-based architecture and its default head.
TIMM_ENCODERS = {
    "zoobot_convnext_nano": ("convnext_nano", "zoobot"),
    "efficientnet_b0_frozen": ("efficientnet_b0", "dense"),
    "efficientnetv2_m_finetune": ("tf_efficientnetv2_m", "dense"),
    "efficientnet_lite0": ("tf_efficientnet_lite0", "linear"),
    "resnet18": ("resnet18", "linear"),
    "resnet50": ("resnet50", "linear"),
}


def _stats(timm_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from galmorph.models.pretrained import pretrained_stats

    return pretrained_stats(timm_name)


def make_head(kind: str, in_features: int, n_classes: int, hidden: int = 1028, dropout: float = 0.2,
              classifier_dropout: float = 0.0) -> nn.Module:
    """``linear``, ``dense`` (Dense hidden + ReLU -> n, the arm study's) or ``zoobot`` (Linear 128 ->
    Dropout -> ReLU -> Linear n, the lopsided study's). ``classifier_dropout`` > 0 puts a Dropout before
    the linear head (the chirality networks' head dropout, what MC dropout switches on); at 0 the head
    is the bare Linear (same parameter names as before)."""
    if kind == "linear":
        if classifier_dropout > 0:
            return nn.Sequential(nn.Dropout(classifier_dropout), nn.Linear(in_features, n_classes))
        return nn.Linear(in_features, n_classes)
    if kind == "dense":
        return dense_head(in_features, n_classes, hidden)
    if kind == "zoobot":
        return zoobot_head(in_features, n_classes, dropout)
    raise ValueError(f"unknown head {kind!r}; expected linear, dense or zoobot")


def build_network(params: NetworkParams | Any) -> tuple[nn.Module, dict[str, str]]:
    """The network for :class:`~galmorph.models.params.NetworkParams` (or an object with
    ``network_params()``, such as a training config); returns ``(net, tags)`` where ``tags`` describe
    the initialisation (``encoder_init`` = ``random``, ``package:<dist>==<version> (...)`` or
    ``<file|mlflow>:<ref> (sha256:...)``).

    Timm encoders get the input normalisation of their pretrained configuration (EfficientNet-Lite:
    mean = std = 0.5; ResNet/ConvNeXt/B0: ImageNet). ``tta_views > 1`` (chirality) wraps the trained
    network in :class:`~galmorph.models.chirality.ChiralityViews` -- use :func:`with_views`.
    """
    from galmorph.models.chirality import ChiralityEquivariant
    from galmorph.models.pretrained import load_pretrained_encoder

    cfg = as_network_params(params)
    n, c = len(cfg.classes), cfg.in_chans
    weights = cfg.encoder_weights_spec()
    tags: dict[str, str] = {}
    if cfg.arch in TIMM_ENCODERS:
        timm_name, default_head = TIMM_ENCODERS[cfg.arch]
        enc = _timm(timm_name, c)
        source = load_pretrained_encoder(enc, weights)
        if source.kind == "none" and cfg.arch == "zoobot_convnext_nano":
            log.warning("Zoobot encoder: no encoder weights given -> RANDOM initialisation (no pretrained "
                        "Zoobot weights; set encoder_weights=file:PATH or mlflow:URI to fine-tune them)")
        head = make_head(default_head if cfg.head == "auto" else cfg.head, enc.num_features, n, cfg.head_hidden,
                         cfg.head_dropout, cfg.classifier_dropout)
        mean, std = _stats(timm_name)
        net = GalaxyNet(enc, head, c, frozen_encoder=cfg.arch == "efficientnet_b0_frozen", mean=mean, std=std)
        tags.update(source.tags())
    elif cfg.arch in ("gresnet18", "gresnet50"):
        from galmorph.models.gresnet import GResNet

        if cfg.task == "chirality" and cfg.reflections:
            raise ValueError("reflection-equivariant G-ResNet refused for chirality (a reflection swaps CW/ACW)")
        if weights != "none":
            raise ValueError(f"G-ResNet ({cfg.arch}): no pretrained encoder weights exist; got {weights!r}")
        net = GResNet(depth=int(cfg.arch[len("gresnet"):]), n_classes=n, in_chans=c, group_order=cfg.group_order,
                      reflections=cfg.reflections, width=cfg.gresnet_width, dropout=cfg.classifier_dropout)
        tags["encoder_init"] = "random"
    else:
        raise ValueError(f"unknown arch {cfg.arch!r}")
    if cfg.chirality_equivariant:
        net = ChiralityEquivariant(net)
    return net, tags


def with_views(net: nn.Module, views: int) -> nn.Module:
    """``net`` wrapped in chirality test-time views (``views`` 1 returns ``net`` itself)."""
    from galmorph.models.chirality import ChiralityViews

    return net if views == 1 else ChiralityViews(net, views)


def input_normalisation(net: nn.Module) -> tuple[list[float], list[float]]:
    """``(mean, std)`` applied inside ``net`` (its first :class:`~galmorph.models.layers.Normalize`)."""
    for m in net.modules():
        if isinstance(m, Normalize):
            return m.values()
    raise ValueError(f"{type(net).__name__} has no Normalize layer (model contract: normalisation inside)")


def export_plain(net: nn.Module) -> nn.Module:
    """A plain-torch, eval-mode copy suitable for ``torch.export`` (escnn modules exported)."""
    import copy

    from galmorph.models.chirality import ChiralityEquivariant, ChiralityViews
    from galmorph.models.gresnet import GResNet

    net = net.eval()
    if isinstance(net, ChiralityEquivariant):
        return ChiralityEquivariant(export_plain(net.backbone)).eval()
    if isinstance(net, ChiralityViews):
        return ChiralityViews(export_plain(net.backbone), net.views).eval()
    if isinstance(net, GResNet):
        return net.export().eval()
    return copy.deepcopy(net).eval()
