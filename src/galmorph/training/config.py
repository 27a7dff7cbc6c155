"""Typed training configuration, per-task presets and ``key=value`` overrides.

A :class:`TrainConfig` is one flat, typed dataclass so that it maps one-to-one onto MLflow params and
onto ``galmorph train --set key=value``. Presets reproduce the published settings of the three studies
(see ``docs/training.md`` for sources and deviations) plus ``tiny*`` presets for CI.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pydantic

from galmorph.models.archs import ARCHS, UnknownArchError, arch_info, archs_for_packaged
from galmorph.models.params import HEADS, NetworkParams
from galmorph.tasks import ARM_MERGES, TASKS

MONITORS = {"val_loss": "min", "val_acc": "max", "val_f1_macro": "max"}
#: Lightning accelerators a config may name (``gpu`` and ``cuda`` are the same here)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
#: Fields that say how a training runs, not what it trains: an interrupted training resumes under other values.
LAUNCH_FIELDS = frozenset({"devices", "num_nodes", "accelerator", "precision", "progress", "num_workers",
                           "torch_threads", "record_samples", "max_restarts", "auto_resume", "resume_from"})


class ConfigError(ValueError):
    """A configuration key or value is unusable; the message says which and why."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (logged as MLflow params)."""

    task: str = "chirality"
    preset: str = "custom"
    # --- model -----------------------------------------------------------------------------
    arch: str = "resnet18"               # a named arch (galmorph.models.archs.NAMED) or any timm model name
    chirality_equivariant: bool = False  # wrap the backbone in the CE (image + mirror) predictor
    image_size: int = 64
    greyscale: bool = False
    crop_fraction: float = 1.0           # central crop before resizing (224/424 for the arms study)
    head_hidden: int = 1028              # EfficientNet heads: Dense(head_hidden)+ReLU -> classes
    head_dropout: float = 0.2            # Zoobot head dropout
    classifier_dropout: float = 0.0      # dropout before the final Linear of linear heads and of the G-ResNet
                                         # (the chirality networks); > 0 enables MC dropout (#15)
    finetune_blocks: int = 2             # Zoobot: number of trailing encoder blocks that are trained
    lr_decay: float = 0.5                # Zoobot: layer-wise learning-rate decay per block
    encoder_weights: str = "none"        # none | package:efficientnet-lite0 | file:PATH | mlflow:URI (strict load)
    head: str = "auto"                   # auto (the arch's own) | linear | dense | zoobot
    tta_views: int = 1                   # chirality: test-time views of the exported model (1, 2 = mirror pair,
                                         # 8 = 4 rotations x mirror; CW/ACW swapped on mirrored views)
    group_order: int = 8                 # G-ResNet: rotations C_N
    reflections: bool = False            # G-ResNet: D_N instead of C_N (refused for chirality)
    gresnet_width: float = 1.0           # G-ResNet: width multiplier (fields = width * ResNet planes / sqrt(N))
    # --- optimisation ------------------------------------------------------------------------
    optimizer: str = "adam"              # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32                 # images per optimiser step over all processes: each of the
                                         # devices x num_nodes processes takes batch_size / world size
    max_epochs: int = 20
    min_epochs: int = 0
    monitor: str = "val_loss"            # val_loss | val_acc | val_f1_macro (early stopping + best checkpoint)
    patience: int = 5
    seed: int = 42
    precision: str = "auto"              # auto (16-mixed on GPU, 32 on CPU) | 32-true | 16-mixed | bf16-mixed
    accelerator: str = "auto"            # auto | cpu | gpu (= cuda) | mps
    deterministic: bool = True
    progress: bool = True
    torch_threads: int = 0               # intra-op CPU threads during training (0 = torch default); 1 is
                                         # much faster on an oversubscribed CPU (OpenMP spin-waiting)
    # --- data ---------------------------------------------------------------------------------
    trials: int = 1                      # repeated random splits (child runs of one parent)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    max_per_class: int = 0               # class down-sampling (0 = keep all)
    arm_merge: str = "none"              # none | 3+4 | 4+5+
    include_cant_tell: bool = True
    rotation_deg: float = 180.0          # uniform rotation in [-deg, +deg]
    zoom: float = 0.1                    # uniform zoom factor in [1-zoom, 1+zoom]
    flips: bool = True                   # random horizontal/vertical flips (never for chirality)
    mirror_copies: bool = False          # chirality: add a mirrored copy with CW/ACW swapped (train set)
    mirror_swap: bool = False            # chirality: mirror half the training images at random, CW/ACW swapped
    class_weights: str = "none"          # none | balanced (cross-entropy weights N / (K n_c) from the train split)
    winding_stack: bool = False          # chirality: fit the winding stacker (network + winding measurement) on the
                                         # validation split; scoring applies it by default (galmorph.scoring.ensemble)
    num_workers: int = 0                 # DataLoader workers; -1 = from the machine (one per core beyond one)
    cache_images: bool = False           # decode every image once into a memory-mapped cache (workers share it)
    resume_from: str = ""                # Lightning checkpoint to resume (single-trial runs)
    auto_resume: bool = True             # an interrupted training of the same config and manifest in the same
                                         # out_dir goes on from its trials' last checkpoints (and MLflow runs)
    # --- data parallelism (#28; docs/training.md) ----------------------------------------------------------
    devices: int = 1                     # processes per node (GPUs per node on GPU); devices x num_nodes > 1:
                                         # Lightning DDP (gloo on CPU, NCCL on GPU), one process per device
    num_nodes: int = 1                   # nodes (> 1 only under a launcher on every node: torchrun, a TrainJob)
    sync_batchnorm: bool = True          # DDP: batch-norm statistics over the global batch, as one process has
    data_order: str = "auto"             # auto (one process: the DataLoader's shuffle; DDP: sharded) | sharded
                                         # (one process steps through the global batches a DDP run takes)
    record_samples: bool = False         # write each rank's sample positions per epoch (trial-N/samples/)
    max_restarts: int = 1                # local DDP launch: restarts of the ranks after a failure (torchrun)

    # ------------------------------------------------------------------------------------------
    @property
    def in_chans(self) -> int:
        return 1 if self.greyscale else 3

    @property
    def world_size(self) -> int:
        """Training processes (data-parallel ranks): ``devices * num_nodes``."""
        return self.devices * self.num_nodes

    def classes(self) -> tuple[str, ...]:
        from galmorph.tasks import arm_classes

        if self.task == "arms":
            return arm_classes(self.arm_merge, self.include_cant_tell)
        return TASKS[self.task].classes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def network_params(self, class_weights: tuple[float, ...] = ()) -> NetworkParams:
        """The model layer's parameters for this run (network, initialisation, optimiser)."""
        return NetworkParams(
            task=self.task, classes=self.classes(), arch=self.arch, in_chans=self.in_chans,
            chirality_equivariant=self.chirality_equivariant, head_hidden=self.head_hidden,
            head_dropout=self.head_dropout, classifier_dropout=self.classifier_dropout,
            group_order=self.group_order, reflections=self.reflections, gresnet_width=self.gresnet_width,
            encoder_weights=self.encoder_weights, head=self.head,
            optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
            finetune_blocks=self.finetune_blocks, lr_decay=self.lr_decay, class_weights=tuple(class_weights))

    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` for inconsistent settings; returns ``self``."""
        def bad(msg: str) -> None:
            raise ConfigError(f"training config (task={self.task}, preset={self.preset}): {msg}")

        if self.task not in TASKS:
            bad(f"unknown task {self.task!r}; expected one of {sorted(TASKS)}")
        self._validate_arch(bad)
        if self.monitor not in MONITORS:
            bad(f"monitor must be one of {sorted(MONITORS)}, got {self.monitor!r}")
        if self.arm_merge not in ARM_MERGES:
            bad(f"arm_merge must be one of {sorted(ARM_MERGES)}, got {self.arm_merge!r}")
        if self.arm_merge != "none" and self.task != "arms":
            bad("arm_merge only applies to the arms task")
        if self.task == "chirality" and self.flips:
            bad("flips=true would mirror images and swap CW/ACW; chirality augmentation is rotation and "
                "zoom only (use mirror_copies=true to add mirrored copies with swapped labels)")
        if self.task == "chirality" and self.reflections:
            bad("reflection-equivariant G-ResNet refused for chirality: a reflection maps CW onto ACW, so a "
                "reflection-invariant model cannot tell them apart")
        if self.mirror_swap and self.task != "chirality":
            bad("mirror_swap only applies to the chirality task")
        if self.tta_views not in (1, 2, 8):
            bad(f"tta_views must be 1, 2 or 8, got {self.tta_views}")
        if self.tta_views > 1 and self.task != "chirality":
            bad("tta_views > 1 (chirality-equivariant test-time views) only applies to the chirality task")
        if self.class_weights not in ("none", "balanced"):
            bad(f"class_weights must be none or balanced, got {self.class_weights!r}")
        if self.mirror_copies and self.task != "chirality":
            bad("mirror_copies only applies to the chirality task")
        if self.chirality_equivariant and self.task != "chirality":
            bad("chirality_equivariant only applies to the chirality task")
        for name in ("head_dropout", "classifier_dropout"):
            if not 0 <= getattr(self, name) < 1:
                bad(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.crop_fraction <= 1:
            bad(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.image_size < 16:
            bad(f"image_size must be >= 16, got {self.image_size}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            bad(f"val_fraction ({self.val_fraction}) + test_fraction ({self.test_fraction}) must be < 1")
        if self.val_fraction == 0:
            bad("val_fraction must be > 0 (early stopping and the best checkpoint use the validation set)")
        if self.winding_stack and self.task != "chirality":
            bad(f"winding_stack is for the chirality task (CW/ACW/other), not {self.task!r}")
        for name in ("trials", "batch_size", "max_epochs", "group_order"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < -1:
            bad(f"num_workers must be >= 0, or -1 for one per core beyond one, got {self.num_workers}")
        for name in ("patience", "max_per_class", "min_epochs", "finetune_blocks", "torch_threads"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.zoom < 1:
            bad(f"zoom must be in [0, 1), got {self.zoom}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            bad(f"optimizer must be adam, adamw or sgd, got {self.optimizer!r}")
        if self.precision not in ("auto", "32-true", "16-mixed", "bf16-mixed"):
            bad(f"precision must be auto, 32-true, 16-mixed or bf16-mixed, got {self.precision!r}")
        self._validate_parallel(bad)
        if self.resume_from and self.trials != 1:
            bad("resume_from needs trials=1 (a checkpoint belongs to one trial)")
        if self.resume_from and not Path(self.resume_from).is_file():
            bad(f"resume_from checkpoint {self.resume_from} does not exist")
        return self

    def _validate_parallel(self, bad) -> None:
        """Devices, nodes, accelerator and the split of the batch over the processes (#28)."""
        for name in ("devices", "num_nodes"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_restarts < 0:
            bad(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.accelerator not in ACCELERATORS:
            bad(f"accelerator must be one of {list(ACCELERATORS)}, got {self.accelerator!r}")
        if self.data_order not in ("auto", "sharded"):
            bad(f"data_order must be auto or sharded, got {self.data_order!r}")
        if self.batch_size % self.world_size:
            bad(f"batch_size ({self.batch_size}, the images of one optimiser step over all processes) must be a "
                f"multiple of devices x num_nodes ({self.world_size})")

    def _validate_arch(self, bad) -> None:
        """The arch, its head and its encoder weights (asked of :func:`galmorph.models.archs.arch_info`)."""
        try:
            info = arch_info(self.arch)
        except UnknownArchError as exc:
            bad(str(exc))
        if self.head not in HEADS:
            bad(f"head must be one of {list(HEADS)}, got {self.head!r}")
        if self.head != "auto" and not info.configurable_head:
            bad(f"head applies to timm encoders, not to {self.arch} ({info.family})")
        try:
            from galmorph.models.pretrained import parse_encoder_weights

            kind, ref = parse_encoder_weights(self.encoder_weights)
        except ValueError as exc:
            bad(str(exc))
        if kind != "none" and not info.accepts_encoder_weights:
            bad(f"{self.arch} ({info.family}): no pretrained encoder weights exist; encoder_weights must be none, "
                f"got {self.encoder_weights!r}")
        if kind == "package" and ref not in info.packaged_weights:
            bad(f"encoder_weights={self.encoder_weights} do not fit the {info.encoder} encoder of {self.arch!r}; "
                f"arch must be {' or '.join(archs_for_packaged(ref))}")


# ----------------------------------------------------------------------------------------------
# presets
# ----------------------------------------------------------------------------------------------
_LOPSIDED_PAPER = dict(
    arch="zoobot_convnext_nano", image_size=224, batch_size=64, lr=1e-5, weight_decay=0.05, optimizer="adamw",
    finetune_blocks=2, lr_decay=0.5, head_dropout=0.2, trials=10, test_fraction=0.2, val_fraction=0.1,
    monitor="val_loss", patience=5, max_epochs=100, rotation_deg=180.0, zoom=0.1, flips=True,
)
_ARMS_PAPER = dict(
    image_size=224, crop_fraction=224 / 424, batch_size=32, lr=1e-4, optimizer="adam", max_per_class=300,
    monitor="val_acc", patience=30, max_epochs=200, rotation_deg=180.0, zoom=0.2, flips=True,
    test_fraction=0.2, val_fraction=0.1, head_hidden=1028,
)
_CHIRALITY_PAPER = dict(
    image_size=224, batch_size=64, lr=1e-3, optimizer="adam", max_epochs=60, monitor="val_loss", patience=10,
    rotation_deg=180.0, zoom=0.1, flips=False, test_fraction=0.2, val_fraction=0.1, group_order=8,
)
_TINY = dict(image_size=64, batch_size=16, max_epochs=2, patience=2, trials=1, lr=1e-3, optimizer="adam",
             weight_decay=0.0, val_fraction=0.2, test_fraction=0.2, torch_threads=1, cache_images=True)

#: Framing measured on the shared data (median radius where the azimuthal profile falls to 10 % of
#: its peak, 60 images each): GZ1 SDSS JPEGs 51.5 px of 423 (0.12 of the frame), gz2_arms renderings
#: 109 px of 512 (0.21). A crop of 0.40 (GZ1) / 0.70 (arms) puts the galaxy's diameter at ~0.6 of
#: the model's input, i.e. ~78 px of 128 (arms: ~100 px of 160) -- the arms are resolved.
GZ1_CROP, ARMS_CROP, LOPSIDED_CROP = 0.40, 0.70, 0.50
#: Pretrained EfficientNet-Lite0, fine-tuned end to end on both cores: the ``reference`` presets. They hold
#: nothing out inside training (test_fraction 0: every labelled row trains or validates); the held-out
#: galaxies are the training pipeline's split and the reference benchmark's test quarter (#26.4).
_REFERENCE = dict(arch="efficientnet_lite0", encoder_weights="package:efficientnet-lite0", image_size=128,
                  batch_size=32, optimizer="adamw", lr=5e-4, weight_decay=1e-4, max_epochs=12, patience=4,
                  monitor="val_f1_macro", trials=1, val_fraction=0.1, test_fraction=0.0, rotation_deg=180.0,
                  zoom=0.1, cache_images=True, class_weights="balanced")

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "lopsided": {
        "paper": _LOPSIDED_PAPER,
        "zoobot": _LOPSIDED_PAPER,
        # the paper's head (Zoobot: Linear 128 -> Dropout -> ReLU -> Linear) on the pretrained encoder
        "reference": {**_REFERENCE, "head": "zoobot", "head_dropout": 0.2, "crop_fraction": LOPSIDED_CROP,
                      "weight_decay": 0.05, "lr": 3e-4, "max_epochs": 20, "patience": 5, "flips": True},
        "tiny": {**_TINY, "arch": "zoobot_convnext_nano", "finetune_blocks": 2, "lr_decay": 0.5,
                 "weight_decay": 0.05, "optimizer": "adamw", "image_size": 32, "trials": 2, "max_epochs": 1,
                 "rotation_deg": 180.0, "zoom": 0.1, "flips": True},
    },
    "arms": {
        "paper": {**_ARMS_PAPER, "arch": "efficientnet_b0_frozen"},
        # the paper's head (Dense 1028 + ReLU -> classes) on the pretrained encoder, <= 300 per class
        "reference": {**_REFERENCE, "head": "dense", "head_hidden": 1028, "crop_fraction": ARMS_CROP,
                      "image_size": 160, "max_per_class": 300, "max_epochs": 30, "patience": 6, "flips": True},
        "b0_frozen": {**_ARMS_PAPER, "arch": "efficientnet_b0_frozen"},
        "b0_frozen_grey": {**_ARMS_PAPER, "arch": "efficientnet_b0_frozen", "greyscale": True},
        "v2m_finetune": {**_ARMS_PAPER, "arch": "efficientnetv2_m_finetune"},
        "v2m_finetune_grey": {**_ARMS_PAPER, "arch": "efficientnetv2_m_finetune", "greyscale": True},
        "tiny": {**_TINY, "arch": "efficientnet_b0_frozen", "head_hidden": 64, "monitor": "val_acc",
                 "include_cant_tell": False, "rotation_deg": 180.0, "zoom": 0.2, "flips": True,
                 "crop_fraction": 0.8},
    },
    "chirality": {
        "paper": {**_CHIRALITY_PAPER, "arch": "resnet50", "chirality_equivariant": True},
        # trained on all CW/ACW of the public GZ1 set + 500 "other" (demo --real and benchmarks/reference.py
        # select them; 1000 "other" was tried and did worse, results/reference_n_other_1000.md);
        # max_per_class caps any class at 1000; mirrors only with CW/ACW swapped; 8 CE views.
        # At least 6 epochs: with val_loss and patience 4, one split in five stopped before the winding
        # sense was learnt (CW/ACW 0.65); the validation macro-F1 weighs CW and ACW like "other".
        "reference": {**_REFERENCE, "crop_fraction": GZ1_CROP, "flips": False, "mirror_swap": True,
                      "max_per_class": 1000, "tta_views": 8, "min_epochs": 6, "max_epochs": 15, "patience": 5,
                      "winding_stack": True},
        "resnet18": {**_CHIRALITY_PAPER, "arch": "resnet18"},
        "resnet50": {**_CHIRALITY_PAPER, "arch": "resnet50"},
        "gresnet18": {**_CHIRALITY_PAPER, "arch": "gresnet18"},
        "gresnet50": {**_CHIRALITY_PAPER, "arch": "gresnet50"},
        "ce_resnet18": {**_CHIRALITY_PAPER, "arch": "resnet18", "chirality_equivariant": True},
        "ce_resnet50": {**_CHIRALITY_PAPER, "arch": "resnet50", "chirality_equivariant": True},
        "ce_gresnet18": {**_CHIRALITY_PAPER, "arch": "gresnet18", "chirality_equivariant": True},
        "ce_gresnet50": {**_CHIRALITY_PAPER, "arch": "gresnet50", "chirality_equivariant": True},
        "tiny": {**_TINY, "arch": "resnet18", "flips": False, "zoom": 0.1, "image_size": 32},
        "tiny_ce": {**_TINY, "arch": "resnet18", "flips": False, "zoom": 0.1, "image_size": 32,
                    "chirality_equivariant": True},
        "tiny_gresnet": {**_TINY, "arch": "gresnet18", "flips": False, "zoom": 0.1, "image_size": 32,
                         "gresnet_width": 0.125, "max_epochs": 1},
    },
}


def preset_names(task: str) -> list[str]:
    if task not in PRESETS:
        raise ConfigError(f"unknown task {task!r}; expected one of {sorted(PRESETS)}")
    return list(PRESETS[task])


# ----------------------------------------------------------------------------------------------
# overrides
# ----------------------------------------------------------------------------------------------
_EXPECTS = {bool: "a boolean (true/false, yes/no, on/off, 1/0)", int: "an integer", float: "a number",
            str: "a string"}


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


@functools.cache
def _overrides_model() -> type[pydantic.BaseModel]:
    """The pydantic model of :class:`TrainConfig`'s fields (all optional) that types overrides."""
    cfg = pydantic.ConfigDict(extra="forbid", coerce_numbers_to_str=True, str_strip_whitespace=True)
    return pydantic.create_model("TrainConfigOverrides", __config__=cfg,
                                 **{k: (t, None) for k, t in _field_types().items()})


#: Keys that were removed from the config, with what to use instead.
RETIRED_KEYS = {"encoder_checkpoint": "use encoder_weights=file:PATH or encoder_weights=mlflow:URI"}


def coerce_values(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (often strings from the command line or YAML) typed by the pydantic model of the config;
    a :class:`ConfigError` names every unknown key (with close matches) and every key whose value does
    not fit its field's type."""
    types = _field_types()
    problems = []
    for key in values:
        if key in RETIRED_KEYS:
            problems.append(f"training config key {key!r} was removed: {RETIRED_KEYS[key]}")
        elif key not in types:
            close = difflib.get_close_matches(key, list(types), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(f"unknown training config key {key!r}{hint} (known keys: {', '.join(types)})")
        elif isinstance(values[key], bool) and types[key] in (int, float):
            problems.append(f"config key {key!r} expects {_EXPECTS[types[key]]}, got {values[key]!r}")
    if not problems:
        try:
            model = _overrides_model().model_validate(values)
        except pydantic.ValidationError as exc:
            for err in exc.errors():
                key = str(err["loc"][0])
                problems.append(f"config key {key!r} expects {_EXPECTS.get(types[key], types[key].__name__)}, "
                                f"got {values[key]!r} ({err['msg']})")
    if problems:
        raise ConfigError("; ".join(problems))
    return {k: getattr(model, k) for k in values}


def coerce_value(key: str, value: Any) -> Any:
    """``value`` converted to the type of field ``key`` (see :func:`coerce_values`)."""
    return coerce_values({key: value})[key]


def parse_set_items(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["lr=1e-4", "trials=3"]`` -> typed dict (errors name the offending item)."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return coerce_values(out)


def resolve_config(task: str, preset: str = "tiny", overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The preset's config for ``task`` with ``overrides`` applied and validated."""
    names = preset_names(task)
    if preset not in PRESETS[task]:
        raise ConfigError(f"unknown preset {preset!r} for task {task!r}; expected one of {names}")
    values: dict[str, Any] = {"task": task, "preset": preset, **PRESETS[task][preset]}
    for k in overrides or {}:
        if k in ("task", "preset"):
            raise ConfigError(f"override {k!r} is not allowed; pass it as the task/preset argument")
    values.update(coerce_values(dict(overrides or {})))
    return TrainConfig(**values).validate()


def config_to_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_yaml(text: str) -> TrainConfig:
    import yaml

    d = yaml.safe_load(text) or {}
    for key in RETIRED_KEYS:  # configs logged before a key was retired: unset values are dropped
        if key in d and not d[key]:
            d.pop(key)
    return TrainConfig(**coerce_values(d)).validate()


__all__ = ["ACCELERATORS", "ARCHS", "ConfigError", "LAUNCH_FIELDS", "PRESETS", "TrainConfig", "coerce_value",
           "coerce_values", "config_from_yaml", "config_to_yaml", "parse_set_items", "preset_names", "resolve_config"]
