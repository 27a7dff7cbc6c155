"""Lightning data modules over manifests: label preparation, class down-sampling, arm-class merges,
stratified seeded splits (repeated for trials), per-task augmentation, mirrored chirality copies and
random mirrors with CW/ACW swapped (``mirror_swap``), balanced class weights.

Rows are never lost silently: every manifest row is either used (and assigned to one split) or listed
in :attr:`GalaxyDataModule.excluded` with the reason (label missing / not a class of the task / other
task / down-sampled away), which training logs as an artifact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from galmorph.datasets.augment import AugmentSpec, RandomGalaxyAugment, RandomMirrorSwap, augment_spec_for, mirror
from galmorph.datasets.images import DecodedImageCache, ManifestImageDataset
from galmorph.catalogue.manifest import quarantine_record
from galmorph.tasks import ARM_MERGES

log = logging.getLogger(__name__)

STAGE = "train-data"
#: chirality labels swapped by a mirror image
MIRROR_LABEL = {"CW": "ACW", "ACW": "CW"}


# ----------------------------------------------------------------------------------------------
# label preparation
# ----------------------------------------------------------------------------------------------
def prepare_labels(manifest: pd.DataFrame, task: str, classes: Sequence[str], arm_merge: str = "none"
                   ) -> tuple[pd.DataFrame, list[dict]]:
    """Rows usable for ``task`` with labels mapped (arm merges) and the excluded rows with reasons.

    Returns ``(usable, excluded_records)``; ``len(usable) + len(excluded) == len(manifest)``.
    """
    if "label" not in manifest.columns:
        raise ValueError(f"manifest for task {task!r} has no 'label' column")
    mapping = ARM_MERGES.get(arm_merge, {}) if task == "arms" else {}
    classes = list(classes)
    df = manifest.reset_index(drop=True).copy()
    labels = df["label"].astype("object").where(df["label"].notna(), None)
    labels = labels.map(lambda v: None if v is None else mapping.get(str(v), str(v)))
    keep = np.ones(len(df), dtype=bool)
    excluded: list[dict] = []
    row_task = df["task"] if "task" in df.columns else pd.Series([None] * len(df))
    for i in range(len(df)):
        t = row_task.iat[i]
        reason = None
        if t is not None and not pd.isna(t) and str(t) != task:
            reason = f"row labelled for task {t!r}, not {task!r}"
        elif labels.iat[i] is None:
            reason = "no label"
        elif labels.iat[i] not in classes:
            reason = f"label {labels.iat[i]!r} is not a class of {task} {classes}"
        if reason:
            keep[i] = False
            excluded.append(quarantine_record(df.at[i, "object_id"], STAGE, reason, df.iloc[i].to_dict()))
    df["label"] = labels
    out = df[keep].reset_index(drop=True)
    if excluded:
        log.info("%s: %d of %d manifest rows excluded (reasons in excluded.parquet)", task, len(excluded), len(df))
    return out, excluded


def downsample_per_class(df: pd.DataFrame, max_per_class: int, seed: int) -> tuple[pd.DataFrame, list[dict]]:
    """Keep at most ``max_per_class`` random rows of each label (0 = keep all); the rest are returned as
    excluded records with the reason."""
    if max_per_class <= 0:
        return df.reset_index(drop=True), []
    rng = np.random.default_rng(seed)
    keep_idx: list[int] = []
    excluded: list[dict] = []
    for lab, grp in df.groupby("label", sort=True):
        idx = grp.index.to_numpy()
        if len(idx) > max_per_class:
            chosen = np.sort(rng.choice(idx, size=max_per_class, replace=False))
            dropped = np.setdiff1d(idx, chosen)
            for j in dropped:
                excluded.append(quarantine_record(df.at[j, "object_id"], STAGE,
                                                  f"class {lab!r} down-sampled to {max_per_class}",
                                                  df.loc[j].to_dict()))
            idx = chosen
        keep_idx.extend(idx.tolist())
    return df.loc[sorted(keep_idx)].reset_index(drop=True), excluded


def stratified_split(labels: Sequence[str], val_fraction: float, test_fraction: float, seed: int
                     ) -> dict[str, np.ndarray]:
    """Seeded stratified split into ``train``/``val``/``test`` row positions.

    Per class, ``round(n*test_fraction)`` rows go to test and ``round(n*val_fraction)`` to val, each at
    least 1 when the fraction is > 0 and the class has >= 3 rows; the rest train.
    """
    labels = np.asarray(list(labels), dtype=object)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for lab in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == lab)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if n >= 3:
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test, n_val = min(n_test, n), min(n_val, max(n - n_test, 0))
        parts["test"].extend(idx[:n_test].tolist())
        parts["val"].extend(idx[n_test:n_test + n_val].tolist())
        parts["train"].extend(idx[n_test + n_val:].tolist())
    return {k: np.sort(np.asarray(v, dtype=int)) for k, v in parts.items()}


def repeated_splits(labels: Sequence[str], trials: int, val_fraction: float, test_fraction: float, seed: int
                    ) -> list[dict[str, np.ndarray]]:
    """``trials`` independent stratified splits (trial ``i`` uses seed ``seed + i``)."""
    return [stratified_split(labels, val_fraction, test_fraction, seed + i) for i in range(trials)]


def add_mirror_copies(df: pd.DataFrame) -> pd.DataFrame:
    """Append a mirrored copy of every row, CW and ACW labels swapped (column ``mirrored``)."""
    base = df.copy()
    base["mirrored"] = base.get("mirrored", False)
    base["mirrored"] = base["mirrored"].fillna(False).astype(bool)
    copy = base.copy()
    copy["mirrored"] = ~copy["mirrored"]
    copy["label"] = copy["label"].map(lambda v: MIRROR_LABEL.get(v, v))
    return pd.concat([base, copy], ignore_index=True)


# ----------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------
class TaskImageDataset(Dataset):
    """``(image (C,S,S), class index)`` items for training, over :class:`ManifestImageDataset`.

    Rows with ``mirrored=True`` are left-right mirrored before augmentation (their label is already
    swapped by :func:`add_mirror_copies`). ``cache`` (a :class:`~galmorph.datasets.images.DecodedImageCache`)
    serves the decoded images from its memory-mapped file instead of decoding them every epoch.
    """

    def __init__(self, frame: pd.DataFrame, classes: Sequence[str], image_size: int, in_chans: int,
                 crop_fraction: float, data_root: Path | str | None = None,
                 augment: RandomGalaxyAugment | None = None, cache: DecodedImageCache | None = None,
                 mirror_swap: RandomMirrorSwap | None = None):
        self.frame = frame.reset_index(drop=True)
        self.base = ManifestImageDataset(self.frame, image_size, in_chans, crop_fraction, classes=classes,
                                         data_root=data_root, on_error="raise")
        self.mirrored = (self.frame["mirrored"].fillna(False).astype(bool).to_numpy()
                         if "mirrored" in self.frame.columns else np.zeros(len(self.frame), dtype=bool))
        self.augment = augment
        self.mirror_swap = mirror_swap
        self.cache = cache
        self.base.decoded = cache

    def __len__(self) -> int:
        return len(self.frame)

    def _image(self, i: int) -> torch.Tensor:
        return self.base[i][0]

    def __getitem__(self, i: int):
        x = self._image(i)
        if self.mirrored[i]:
            x = mirror(x)
        if self.augment is not None:
            x = self.augment(x)
        y = self.base.label_index(i)
        if self.mirror_swap is not None:
            x, y = self.mirror_swap(x, y)
        return x.contiguous(), y

    def labels(self) -> np.ndarray:
        return np.array([self.base.label_index(i) for i in range(len(self))])


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    ds = info.dataset
    if getattr(ds, "augment", None) is not None:
        ds.augment.reseed(torch.initial_seed() % (2**32))
    if getattr(ds, "mirror_swap", None) is not None:
        ds.mirror_swap.reseed((torch.initial_seed() + 1) % (2**32))


class EpochOrder(Sampler[int]):
    """The order of one epoch's items: a permutation of ``0..n-1`` drawn from ``seed`` and the epoch (Lightning
    calls :meth:`set_epoch`) when ``shuffle``, else ``0..n-1``. It depends on nothing else, so every rank of a
    data-parallel run draws the same order, and a one-process run the same order as a W-process run."""

    def __init__(self, n: int, shuffle: bool, seed: int):
        self.n, self.shuffle, self.seed, self.epoch = int(n), bool(shuffle), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def global_batches(n: int, batch_size: int, world_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the global batches of an epoch of ``n`` items: ``batch_size`` each; a last one of
    fewer than ``max(world_size, 2)`` items is merged into the one before (a rank would get none; a training
    batch of one image breaks batch norm). So one and two processes always cut the same batches, and ``W``
    processes the same as one unless the tail is shorter than ``W``."""
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < max(world_size, 2):
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s batches of one epoch (data-parallel training, #28).

    The epoch's :class:`EpochOrder` is cut into global batches of ``batch_size`` (:func:`global_batches`) and
    each global batch is dealt out round-robin: rank ``r`` of ``W`` takes its positions ``r, r+W, ...``. So,
    unlike torch's ``DistributedSampler`` (which pads the epoch by repeating items so that it divides evenly,
    or drops the tail), every item is in exactly one rank's batch once per epoch -- no duplicates, none
    skipped -- and every rank takes the same number of batches, none empty (DDP needs every rank to make the
    same number of steps). The ranks' shares of a global batch differ by at most one item. The global batches
    depend on ``W`` only through a short tail (:func:`global_batches`): a one-process run with this sampler
    steps through the same global batches as a two-process run with the same total ``batch_size``.

    ``record_to``: a file prefix; each epoch's positions are appended, one JSON line per batch, to
    ``<prefix>-rank<r>-epoch<e>.jsonl`` (checks of the sharding; ``record_samples`` in the training config).
    """

    def __init__(self, order: EpochOrder, batch_size: int, rank: int = 0, world_size: int = 1,
                 record_to: Path | str | None = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the world size {world_size}")
        if len(order) < world_size:
            raise ValueError(f"{len(order)} items cannot be shared by {world_size} processes (each needs one)")
        self.sampler = order  # Lightning calls ``batch_sampler.sampler.set_epoch(epoch)`` every epoch
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.record_to = record_to

    def __len__(self) -> int:
        return len(global_batches(len(self.sampler), self.batch_size, self.world_size))

    def __iter__(self):
        order = list(self.sampler)
        record = (Path(f"{self.record_to}-rank{self.rank}-epoch{self.sampler.epoch}.jsonl")
                  if self.record_to else None)
        if record is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text("")
        for start, stop in global_batches(len(order), self.batch_size, self.world_size):
            batch = order[start:stop][self.rank::self.world_size]
            if record is not None:
                with open(record, "a") as fh:
                    fh.write(json.dumps(batch) + "\n")
            yield batch


def loader_settings(num_workers: int | None = None) -> dict:
    """DataLoader settings from the machine: ``num_workers`` (``None`` or negative: one per core beyond the one the
    training step uses, at most 4), persistent workers when there are any (no re-fork each epoch),
    pinned memory when a GPU is visible."""
    import os

    if num_workers is None or num_workers < 0:
        num_workers = max(0, min(4, (os.cpu_count() or 1) - 1))
    return {"num_workers": int(num_workers), "persistent_workers": int(num_workers) > 0,
            "pin_memory": torch.cuda.is_available()}


class GalaxyDataModule(L.LightningDataModule):
    """Train/val/test loaders of one trial of one task over a manifest."""

    def __init__(self, manifest: pd.DataFrame, task: str, classes: Sequence[str], *, image_size: int,
                 in_chans: int = 3, crop_fraction: float = 1.0, batch_size: int = 32, num_workers: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 42, trial: int = 0,
                 max_per_class: int = 0, arm_merge: str = "none", augment: AugmentSpec | None = None,
                 mirror_copies: bool = False, data_root: Path | str | None = None, cache_images: bool = False,
                 mirror_swap: bool = False, cache_dir: Path | str | None = None):
        super().__init__()
        if mirror_copies and task != "chirality":
            raise ValueError("mirror_copies only applies to the chirality task")
        if mirror_swap and task != "chirality":
            raise ValueError("mirror_swap only applies to the chirality task")
        if augment is not None and task == "chirality" and augment.flips:
            raise ValueError("chirality augmentation must not flip images (a mirror swaps CW and ACW)")
        self.task, self.classes = task, list(classes)
        self.image_size, self.in_chans, self.crop_fraction = image_size, in_chans, crop_fraction
        self.batch_size, self.num_workers = batch_size, num_workers
        self.seed, self.trial = seed, trial
        self.augment_spec, self.mirror_copies, self.data_root = augment, mirror_copies, data_root
        self.mirror_swap = mirror_swap
        self.cache_images, self.cache_dir = cache_images, cache_dir
        self.cache: DecodedImageCache | None = None
        usable, excluded = prepare_labels(manifest, task, self.classes, arm_merge)
        #: label counts of the usable manifest rows before down-sampling (the catalogue's class prior)
        self.catalogue_counts = {str(k): int(v) for k, v in usable["label"].value_counts().items()}
        usable, dropped = downsample_per_class(usable, max_per_class, seed)
        self.frame = usable
        self.excluded = excluded + dropped
        missing = [c for c in self.classes if c not in set(usable["label"])]
        if len(usable) == 0:
            raise ValueError(f"no usable rows for task {task!r} (classes {self.classes}); "
                             f"{len(self.excluded)} rows excluded")
        if missing:
            log.warning("%s: classes without any example: %s", task, missing)
        self.split = stratified_split(usable["label"].tolist(), val_fraction, test_fraction, seed + trial)
        self._datasets: dict[str, TaskImageDataset] = {}
        #: data-parallel sharding of the train and val loaders (:meth:`shard`); test loaders are never sharded
        self.rank, self.world_size, self.sharded, self.record_to = 0, 1, False, None

    def shard(self, rank: int = 0, world_size: int = 1, sharded: bool | None = None,
              record_to: Path | str | None = None) -> "GalaxyDataModule":
        """Give this process (rank ``rank`` of ``world_size``) its shard of every epoch of the train and val
        loaders (:class:`ShardedBatchSampler`, ``batch_size`` being the global batch). ``sharded`` (default: when
        ``world_size > 1``) with one process steps through the same global batches as a data-parallel run.
        ``shard()`` gives the whole sets back (evaluation and calibration after training)."""
        self.rank, self.world_size = int(rank), int(world_size)
        self.sharded = self.world_size > 1 if sharded is None else bool(sharded)
        self.record_to = record_to
        return self

    @classmethod
    def from_config(cls, manifest: pd.DataFrame, cfg, trial: int = 0, data_root: Path | str | None = None
                    ) -> "GalaxyDataModule":
        """Build from a :class:`galmorph.training.config.TrainConfig`."""
        return cls(manifest, cfg.task, cfg.classes(), image_size=cfg.image_size, in_chans=cfg.in_chans,
                   crop_fraction=cfg.crop_fraction, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                   val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed, trial=trial,
                   max_per_class=cfg.max_per_class, arm_merge=cfg.arm_merge,
                   augment=augment_spec_for(cfg.task, cfg.rotation_deg, cfg.zoom, cfg.flips),
                   mirror_copies=cfg.mirror_copies, data_root=data_root, cache_images=cfg.cache_images,
                   mirror_swap=cfg.mirror_swap)

    # -- frames ---------------------------------------------------------------------------------
    def split_frame(self, name: str) -> pd.DataFrame:
        df = self.frame.iloc[self.split[name]].reset_index(drop=True)
        if name == "train" and self.mirror_copies:
            df = add_mirror_copies(df)
        return df

    def assignments(self) -> pd.DataFrame:
        """``object_id, label, split`` of every usable row (the split of this trial)."""
        parts = []
        for name in ("train", "val", "test"):
            d = self.frame.iloc[self.split[name]][["object_id", "label"]].copy()
            d["split"] = name
            parts.append(d)
        return pd.concat(parts, ignore_index=True)

    def mirror_label_map(self) -> list[int]:
        """Class index of each class's mirror image (CW <-> ACW, others unchanged)."""
        return [self.classes.index(MIRROR_LABEL.get(c, c)) if MIRROR_LABEL.get(c, c) in self.classes else i
                for i, c in enumerate(self.classes)]

    def class_weights(self) -> list[float]:
        """Balanced cross-entropy weights ``N / (K n_c)`` from the training split (a class without
        training examples gets 0); with ``mirror_swap`` CW and ACW share their counts."""
        counts = self.split_frame("train")["label"].value_counts()
        n = np.array([float(counts.get(c, 0)) for c in self.classes])
        if self.mirror_swap:
            m = self.mirror_label_map()
            n = 0.5 * (n + n[m])
        present = n > 0
        w = np.zeros(len(n))
        w[present] = n.sum() / (present.sum() * n[present])
        return w.tolist()

    def class_priors(self, balanced: bool) -> tuple[dict[str, float], dict[str, float]]:
        """``(trained, catalogue)`` class priors: the prior the loss sees (uniform over the classes with
        training examples when ``balanced`` class weights are used, else the training split's frequencies)
        and the manifest's before down-sampling."""
        counts = self.split_frame("train")["label"].value_counts()
        n = np.array([float(counts.get(c, 0)) for c in self.classes])
        if self.mirror_swap:  # mirrors with CW <-> ACW swapped: both senses equally often
            n = 0.5 * (n + n[self.mirror_label_map()])
        trained = np.where(n > 0, 1.0, 0.0) if balanced else n
        cat = np.array([float(self.catalogue_counts.get(c, 0)) for c in self.classes])
        norm = lambda v: {c: float(x) / float(v.sum()) for c, x in zip(self.classes, v)} if v.sum() > 0 else {}  # noqa: E731
        return norm(trained), norm(cat)

    def class_counts(self) -> dict[str, dict[str, int]]:
        return {name: self.split_frame(name)["label"].value_counts().to_dict() for name in ("train", "val", "test")}

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        if self.cache_images and self.cache is None:
            root = self.cache_dir
            if root is None:
                from galmorph.settings import get_settings

                root = Path(get_settings().state_dir) / "cache" / "images"
            self.cache = DecodedImageCache(root, self.frame["image_uri"].astype(str).tolist(),
                                           self.data_root).build()
        seed = self.seed + 1000 * self.trial + 7919 * self.rank  # each rank its own augmentation stream
        aug = (RandomGalaxyAugment(self.augment_spec, seed=seed)
               if self.augment_spec is not None and self.augment_spec.enabled else None)
        swap = RandomMirrorSwap(self.mirror_label_map(), 0.5, seed=seed + 1) if self.mirror_swap else None
        for name in ("train", "val", "test"):
            self._datasets[name] = TaskImageDataset(
                self.split_frame(name), self.classes, self.image_size, self.in_chans, self.crop_fraction,
                data_root=self.data_root, augment=aug if name == "train" else None, cache=self.cache,
                mirror_swap=swap if name == "train" else None)

    def dataset(self, name: str) -> TaskImageDataset:
        self.setup()
        return self._datasets[name]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        g = torch.Generator()
        g.manual_seed(self.seed + self.trial)
        ds = self.dataset(name)
        if self.sharded and name in ("train", "val"):
            return self._sharded_loader(name, ds, shuffle, g)
        # a last training batch of one image would break batch norm: drop it when there is more
        drop_last = shuffle and len(ds) % self.batch_size == 1 and len(ds) > self.batch_size
        settings = loader_settings(self.num_workers)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, **settings,
                          worker_init_fn=_worker_init if settings["num_workers"] else None, generator=g,
                          drop_last=drop_last)

    def _sharded_loader(self, name: str, ds: TaskImageDataset, shuffle: bool, g: torch.Generator) -> DataLoader:
        order = EpochOrder(len(ds), shuffle, self.seed + self.trial)
        g.manual_seed(self.seed + self.trial + 7919 * self.rank)  # worker seeds (augmentation) differ by rank
        record = f"{self.record_to}/{name}" if self.record_to else None
        sampler = ShardedBatchSampler(order, self.batch_size, self.rank, self.world_size, record_to=record)
        settings = loader_settings(self.num_workers)
        return DataLoader(ds, batch_sampler=sampler, **settings, generator=g,
                          worker_init_fn=_worker_init if settings["num_workers"] else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
