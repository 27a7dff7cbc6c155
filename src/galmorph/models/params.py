"""The model layer's own typed parameters: what builds a network and its optimiser.

:class:`NetworkParams` is all :func:`galmorph.models.networks.build_network` and
:class:`galmorph.models.classifier.GalaxyClassifier` read; the training layer builds it from its
``TrainConfig`` (``TrainConfig.network_params()``), so the model layer never imports training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from galmorph.tasks import TASKS, arm_classes

HEADS: tuple[str, ...] = ("auto", "linear", "dense", "zoobot")


@dataclass(frozen=True)
class NetworkParams:
    """Network architecture, initialisation and optimiser settings (one flat, serialisable record)."""

    task: str
    classes: tuple[str, ...]
    arch: str = "resnet18"               # a named arch or any timm model name (galmorph.models.archs)
    in_chans: int = 3
    chirality_equivariant: bool = False  # paper CE wrapper (image + mirror) around the backbone
    head_hidden: int = 1028              # EfficientNet dense head width
    head_dropout: float = 0.2            # Zoobot head dropout
    classifier_dropout: float = 0.0      # dropout before the final Linear of linear heads and the G-ResNet
    encoder_weights: str = "none"        # none | package:efficientnet-lite0 | file:PATH | mlflow:URI
    head: str = "auto"                   # auto (the arch's) | linear | dense | zoobot
    group_order: int = 8                 # G-ResNet rotations C_N
    reflections: bool = False            # G-ResNet D_N
    gresnet_width: float = 1.0
    # optimiser
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    finetune_blocks: int = 2             # Zoobot: trailing encoder blocks trained
    lr_decay: float = 0.5                # Zoobot: layer-wise learning-rate decay
    class_weights: tuple[float, ...] = field(default_factory=tuple)  # cross-entropy weights ((): none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        if not self.classes:
            raise ValueError(f"network params for task {self.task!r}: no classes")
        if self.class_weights and len(self.class_weights) != len(self.classes):
            raise ValueError(f"network params: {len(self.class_weights)} class weights for "
                             f"{len(self.classes)} classes {list(self.classes)}")

    def encoder_weights_spec(self) -> str:
        """The weights spec (``"none"`` when empty or ``random``)."""
        if self.encoder_weights and self.encoder_weights.lower() not in ("none", "random"):
            return self.encoder_weights
        return "none"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"], d["class_weights"] = list(self.classes), list(self.class_weights)
        return d

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> "NetworkParams":
        """From a dict of these fields; a flat training-config dict (``task``, ``greyscale``,
        ``arm_merge``, ``include_cant_tell`` ...) is accepted too: classes and channels are derived and
        keys that are not network parameters are ignored (so are retired ones, e.g. ``encoder_checkpoint``
        in the hyper-parameters of old checkpoints)."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        if "classes" not in d:
            task = d.get("task")
            if task not in TASKS:
                raise ValueError(f"network params: unknown task {task!r}; expected one of {sorted(TASKS)}")
            d["classes"] = (arm_classes(d.get("arm_merge", "none"), d.get("include_cant_tell", True))
                            if task == "arms" else TASKS[task].classes)
        if isinstance(d.get("class_weights"), str):
            # a flat TrainConfig holds the weighting policy ("none"/"balanced"); numbers come from training
            d.pop("class_weights")
        if "in_chans" not in d and "greyscale" in d:
            d["in_chans"] = 1 if d["greyscale"] else 3
        return cls(**{k: v for k, v in d.items() if k in names})


def as_network_params(obj: Any) -> NetworkParams:
    """``obj`` itself, ``obj.network_params()`` (e.g. a training config) or a mapping of fields."""
    if isinstance(obj, NetworkParams):
        return obj
    if hasattr(obj, "network_params"):
        return obj.network_params()
    if isinstance(obj, Mapping):
        return NetworkParams.from_mapping(obj)
    raise TypeError(f"cannot build network params from {type(obj).__name__}")
