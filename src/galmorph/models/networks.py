"""Networks that satisfy the galmorph model contract (0..1 images in, logits out, normalisation inside).

``build_network(params)`` is the one builder: it asks :func:`galmorph.models.archs.arch_info` what
``params.arch`` is (a named arch, an escnn G-ResNet or any timm model name) and calls the builder of
its family (:data:`BUILDERS`); the result is wrapped in :class:`ChiralityEquivariant` when asked.
Encoders are timm models created with ``pretrained=False`` (never downloaded); their weights come from
:mod:`galmorph.models.pretrained` (``encoder_weights``: packaged EfficientNet-Lite0, a local file or an
MLflow URI; strict, weights only) -- without them the encoder is random (``encoder_init = random``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from galmorph.models.archs import ArchInfo, arch_info
from galmorph.models.layers import (IMAGENET_MEAN, IMAGENET_STD, GalaxyNet, Normalize, dense_head,  # noqa: F401
                                    zoobot_head)
from galmorph.models.params import NetworkParams, as_network_params  # noqa: F401

log = logging.getLogger(__name__)


def timm_encoder(name: str, in_chans: int, **kw: Any) -> nn.Module:
    """The timm model ``name`` without its classifier (pooled features), random weights, never downloaded."""
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kw)


def encoder_features(encoder: nn.Module) -> int:
    """Width of a timm encoder's pooled output: ``head_hidden_size`` where timm keeps a conv head after
    the last stage (MobileNetV3, GhostNet: wider than ``num_features``), else ``num_features``."""
    return int(getattr(encoder, "head_hidden_size", None) or encoder.num_features)


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


def _build_timm(info: ArchInfo, cfg: NetworkParams) -> tuple[nn.Module, dict[str, str]]:
    """``normalize -> timm encoder -> head`` (:class:`GalaxyNet`) with the encoder weights of ``cfg``.

    The normalisation is the one of timm's pretrained configuration of the encoder (EfficientNet-Lite:
    mean = std = 0.5; ResNet/ConvNeXt/B0: ImageNet)."""
    from galmorph.models.pretrained import load_pretrained_encoder, pretrained_stats

    enc = timm_encoder(info.encoder, cfg.in_chans)
    source = load_pretrained_encoder(enc, cfg.encoder_weights_spec())
    tags = source.tags()
    if source.kind == "none" and info.random_init_note:
        log.warning("%s: %s", info.name, info.random_init_note)
        tags["encoder_init_note"] = info.random_init_note
    head = make_head(info.default_head if cfg.head == "auto" else cfg.head, encoder_features(enc),
                     len(cfg.classes), cfg.head_hidden, cfg.head_dropout, cfg.classifier_dropout)
    mean, std = pretrained_stats(info.encoder)
    return GalaxyNet(enc, head, cfg.in_chans, frozen_encoder=info.frozen_encoder, mean=mean, std=std), tags


def _build_gresnet(info: ArchInfo, cfg: NetworkParams) -> tuple[nn.Module, dict[str, str]]:
    """The escnn G-ResNet of depth ``info.depth`` (always random: no pretrained weights exist)."""
    from galmorph.models.gresnet import GResNet

    if cfg.task == "chirality" and cfg.reflections:
        raise ValueError("reflection-equivariant G-ResNet refused for chirality (a reflection swaps CW/ACW)")
    weights = cfg.encoder_weights_spec()
    if weights != "none":
        raise ValueError(f"G-ResNet ({info.name}): no pretrained encoder weights exist; got {weights!r}")
    net = GResNet(depth=info.depth, n_classes=len(cfg.classes), in_chans=cfg.in_chans, group_order=cfg.group_order,
                  reflections=cfg.reflections, width=cfg.gresnet_width, dropout=cfg.classifier_dropout)
    return net, {"encoder_init": "random"}


#: One builder per architecture family (:data:`galmorph.models.archs.FAMILIES`).
BUILDERS: dict[str, Callable[[ArchInfo, NetworkParams], tuple[nn.Module, dict[str, str]]]] = {
    "timm": _build_timm,
    "escnn": _build_gresnet,
}


def build_network(params: NetworkParams | Any) -> tuple[nn.Module, dict[str, str]]:
    """The network for :class:`~galmorph.models.params.NetworkParams` (or an object with
    ``network_params()``, such as a training config); returns ``(net, tags)`` where ``tags`` describe
    the initialisation (``encoder_init`` = ``random``, ``package:<dist>==<version> (...)`` or
    ``<file|mlflow>:<ref> (sha256:...)``; ``encoder_init_note`` when a random start deserves a word).

    ``params.arch`` is a named arch or any timm model name (:func:`~galmorph.models.archs.arch_info`;
    an unknown name raises :class:`~galmorph.models.archs.UnknownArchError` with close names).
    ``tta_views > 1`` (chirality) wraps the trained network in
    :class:`~galmorph.models.chirality.ChiralityViews` -- use :func:`with_views`.
    """
    from galmorph.models.chirality import ChiralityEquivariant

    cfg = as_network_params(params)
    info = arch_info(cfg.arch)
    net, tags = BUILDERS[info.family](info, cfg)
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
