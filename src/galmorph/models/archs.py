"""Architecture registry: what an ``arch`` string means, asked by name (:func:`arch_info`).

An ``arch`` is one of

* a **named arch** of the project (:data:`NAMED`): a preset over a timm encoder with the project's
  defaults (head, frozen encoder, Zoobot layer-wise fine-tuning), or the escnn G-ResNets;
* **any timm model name** (``timm.list_models()``, checked with ``timm.is_model``): built with
  ``timm.create_model(name, pretrained=False, num_classes=0, in_chans=...)`` as the encoder, the
  project's linear head on top (``head`` chooses another) and the normalisation of timm's pretrained
  configuration inside.

Nothing is ever downloaded: an encoder starts random unless ``encoder_weights`` names packaged weights
that fit it (:data:`galmorph.models.pretrained.PACKAGED`), a local file or an MLflow URI; a random
start is recorded as ``encoder_init = random``.

Callers (the builder :func:`galmorph.models.networks.build_network`, the LightningModule, the training
config) ask the :class:`ArchInfo` for what they need -- never compare arch names themselves.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

#: Families of architectures; :func:`galmorph.models.networks.build_network` has one builder per family.
FAMILIES = ("timm", "escnn")


class UnknownArchError(ValueError):
    """An ``arch`` that is neither a named arch nor a timm model name (the message suggests close names)."""


@dataclass(frozen=True)
class ArchInfo:
    """What an arch is and which options apply to it."""

    name: str                       # the arch string as given
    family: str                     # timm | escnn
    encoder: str = ""               # timm model name of the encoder (family timm)
    default_head: str = "linear"    # the head for head=auto (family timm): linear | dense | zoobot
    frozen_encoder: bool = False    # encoder weights fixed, batch norm in eval mode (feature extractor)
    layerwise_finetune: bool = False  # Zoobot fine-tuning: finetune_blocks + lr_decay optimiser groups
    equivariant: bool = False       # rotation-equivariant by construction (escnn C_N / D_N fields)
    depth: int = 0                  # G-ResNet depth (family escnn)
    named: bool = True              # one of the project's named archs (False: a raw timm name)
    random_init_note: str = ""      # warned and tagged (encoder_init_note) when trained from random weights
    description: str = ""

    @property
    def configurable_head(self) -> bool:
        """``head`` may replace the default head (timm encoders; the G-ResNet has its own classifier)."""
        return self.family == "timm"

    @property
    def accepts_encoder_weights(self) -> bool:
        """``encoder_weights`` (package/file/mlflow) can initialise the encoder."""
        return self.family == "timm"

    @property
    def packaged_weights(self) -> tuple[str, ...]:
        """Names of the packaged weights (``encoder_weights=package:NAME``) that fit the encoder."""
        from galmorph.models.pretrained import packaged_weights_for

        return packaged_weights_for(self.encoder) if self.family == "timm" else ()

    @property
    def pretrained_weights_available(self) -> bool:
        """Weights for the encoder ship with the environment (no download ever happens)."""
        return bool(self.packaged_weights)


_ZOOBOT_NOTE = ("no Zoobot weights given: encoder randomly initialised (set encoder_weights=file:PATH or "
                "mlflow:URI to fine-tune them)")

#: The project's named archs (presets over the timm builder, and the escnn G-ResNets).
NAMED: dict[str, ArchInfo] = {a.name: a for a in (
    ArchInfo("zoobot_convnext_nano", "timm", "convnext_nano", "zoobot", layerwise_finetune=True,
             random_init_note=_ZOOBOT_NOTE, description="Zoobot-style fine-tuning of a ConvNeXt-nano encoder"),
    ArchInfo("efficientnet_b0_frozen", "timm", "efficientnet_b0", "dense", frozen_encoder=True,
             description="EfficientNet-B0 as a frozen feature extractor + dense head"),
    ArchInfo("efficientnetv2_m_finetune", "timm", "tf_efficientnetv2_m", "dense",
             description="tf_efficientnetv2_m fine-tuned end to end + dense head"),
    ArchInfo("resnet18", "timm", "resnet18", description="timm ResNet-18 trained from scratch"),
    ArchInfo("resnet50", "timm", "resnet50", description="timm ResNet-50 trained from scratch"),
    ArchInfo("gresnet18", "escnn", depth=18, equivariant=True,
             description="escnn C_N-equivariant ResNet-18 (group pooling before the classifier)"),
    ArchInfo("gresnet50", "escnn", depth=50, equivariant=True,
             description="escnn C_N-equivariant ResNet-50 (group pooling before the classifier)"),
    ArchInfo("efficientnet_lite0", "timm", "tf_efficientnet_lite0",
             description="timm tf_efficientnet_lite0 (SAME padding), fine-tuned end to end"),
)}
#: Names of :data:`NAMED` (any timm model name is an arch too).
ARCHS: tuple[str, ...] = tuple(NAMED)


@functools.cache
def timm_names() -> tuple[str, ...]:
    """Every timm model name (``timm.list_models()``)."""
    import timm

    return tuple(timm.list_models())


def close_arch_names(name: str, n: int = 5) -> list[str]:
    """Named archs and timm model names close to ``name`` (difflib), best first."""
    return difflib.get_close_matches(name, [*NAMED, *timm_names()], n=n, cutoff=0.6)


def _timm_arch(name: str) -> ArchInfo:
    from galmorph.models.pretrained import packaged_weights_for

    packaged = packaged_weights_for(name)
    hint = (f"encoder_weights=package:{packaged[0]} loads the packaged ones" if packaged else
            "encoder_weights=file:PATH or mlflow:URI loads local ones")
    return ArchInfo(name, "timm", name, "linear", named=False,
                    random_init_note=f"timm model {name}: encoder randomly initialised (weights are never "
                                     f"downloaded; {hint})",
                    description=f"timm {name} (random init unless encoder_weights) + linear head")


@functools.cache
def arch_info(name: str) -> ArchInfo:
    """The :class:`ArchInfo` of ``name``: a named arch, else any timm model name; raises
    :class:`UnknownArchError` naming ``name`` and suggesting close names otherwise."""
    name = str(name).strip()
    if name in NAMED:
        return NAMED[name]
    import timm

    if name and timm.is_model(name):
        return _timm_arch(name)
    close = close_arch_names(name)
    hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists the timm names)"
    raise UnknownArchError(f"unknown arch {name!r}: neither a named arch ({', '.join(NAMED)}) nor a timm model "
                           f"name{hint}")


def archs_for_packaged(weights: str) -> list[str]:
    """Arch names whose encoder the packaged ``weights`` fit (named archs first, then the timm name)."""
    from galmorph.models.pretrained import PACKAGED

    timm_name = PACKAGED[weights][3]
    return [a.name for a in NAMED.values() if a.encoder == timm_name] + [timm_name]
