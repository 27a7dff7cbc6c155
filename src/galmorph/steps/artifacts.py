"""Dataset helpers shared by the pipeline components (pure library code, no kfp import).

KFP hands a component its input artifacts at whatever local path the backend chose (a GCS/S3 fuse
mount on Kubernetes, the pipeline root with the local runner), so a dataset that holds images
(a cutout set) stores its image URIs *relative to its own folder*; :func:`open_dataset` resolves
them against wherever the folder is now.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.catalogue.manifest import ManifestError, manifest_metadata, read_manifest, write_manifest

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"


def dataset_manifest_path(path: str | Path) -> Path:
    """The manifest file of a dataset artifact: the path itself, or ``<dir>/manifest.parquet``."""
    p = Path(path)
    if p.is_dir():
        m = p / MANIFEST_NAME
        if not m.exists():
            raise ManifestError(f"dataset folder {p} has no {MANIFEST_NAME}")
        return m
    if not p.exists():
        raise ManifestError(f"dataset {p} does not exist")
    return p


def absolute_image_uri(uri: Any, base: Path) -> Any:
    """``uri`` made absolute under ``base`` when it is a plain relative path (empty, URIs with a scheme and
    absolute paths unchanged): a dataset folder's or a release manifest's own relative image paths."""
    if uri is None or pd.isna(uri) or not str(uri) or "://" in str(uri) or Path(str(uri)).is_absolute():
        return uri
    return str(base / str(uri))


def _rewrite_image_uris(src: Path, dest: Path, rewrite, meta_changes: dict[str, Any]) -> Path:
    """``src`` rewritten to ``dest`` chunk by chunk (bounded memory) with ``rewrite`` applied to every
    ``image_uri`` and ``meta_changes`` merged into its metadata (the kind kept)."""
    from galmorph.catalogue.manifest import ManifestWriter, iter_manifest

    meta = manifest_metadata(src)
    kind = meta.pop("kind", "dataset")
    meta.pop("schema_version", None)
    with ManifestWriter(dest, kind, {**meta, **meta_changes}) as w:
        for df in iter_manifest(src):
            df["image_uri"] = pd.array([rewrite(u) for u in df["image_uri"]], dtype="string")
            w.write(df)
        w.close()
    return dest


def relativize_images(dataset_dir: str | Path) -> Path:
    """Rewrite ``image_uri`` values under ``dataset_dir`` as paths relative to it (in place, streamed)."""
    d = Path(dataset_dir).resolve()
    m = d / MANIFEST_NAME

    def rel(u: Any) -> Any:
        if u is None or pd.isna(u) or not str(u):
            return u
        p = Path(str(u)[7:] if str(u).startswith("file://") else str(u))
        try:
            return p.resolve().relative_to(d).as_posix() if p.is_absolute() else str(u)
        except ValueError:
            return str(u)

    return _rewrite_image_uris(m, m, rel, {"relative_images": True})


def open_dataset(path: str | Path, work_dir: str | Path | None = None) -> Path:
    """A manifest file for a dataset artifact with every relative ``image_uri`` made absolute under the
    artifact's current folder (written to ``work_dir`` or a temporary folder, streamed; inputs may be read-only)."""
    m = dataset_manifest_path(path)
    if not manifest_metadata(m).get("relative_images"):
        return m
    base = m.parent.resolve()
    out = Path(work_dir or tempfile.mkdtemp(prefix="galmorph-ds-")) / MANIFEST_NAME
    return _rewrite_image_uris(m, out, lambda u: absolute_image_uri(u, base),
                               {"relative_images": False, "opened_from": str(m)})


def resolve_release_source(source: str) -> tuple[str, dict[str, Any]]:
    """Map a pipeline ``source``/release URI to an ingest source.

    * ``sim:<dir>``, ``folder:<dir>``, catalogue names (``gz1_chirality``, ...) pass through;
    * ``file://`` prefixes are stripped;
    * a folder with ``truth.parquet`` is a simulator output (``sim:<dir>``);
    * a folder with ``manifest.parquet`` or a ``.parquet`` file is an existing manifest
      (``manifest:<file>``, copied through the schema check);
    * a folder with ``release.json`` names its manifest in the ``manifest`` key.
    """
    s = source.strip()
    if s.startswith("file://"):
        s = s[7:]
    if s.startswith(("sim:", "folder:", "manifest:")):
        return s, {}
    p = Path(s)
    if p.is_dir():
        if (p / "release.json").exists():
            info = json.loads((p / "release.json").read_text())
            mp = Path(info.get("manifest", MANIFEST_NAME))
            return f"manifest:{mp if mp.is_absolute() else p / mp}", {"release": info.get("release", p.name)}
        if (p / "truth.parquet").exists():
            return f"sim:{p}", {}
        if (p / MANIFEST_NAME).exists():
            return f"manifest:{p / MANIFEST_NAME}", {}
        return f"folder:{p}", {}
    if p.suffix == ".parquet" and p.exists():
        return f"manifest:{p}", {}
    return s, {}


def _copy_release_manifest(mp: Path, source: str, out_manifest: str | Path, quarantine_path: str | Path,
                           task: str | None) -> dict[str, Any]:
    """A release's own manifest copied through the schema check, chunk by chunk (bounded memory): relative image
    paths made absolute under the manifest's folder, ``task`` filled in the rows that name none."""
    from galmorph.catalogue.manifest import ManifestWriter, is_csv, iter_manifest, write_quarantine

    meta = {k: v for k, v in manifest_metadata(mp).items() if k not in ("kind", "schema_version")}
    base = mp.parent.resolve()
    chunks = ([read_manifest(mp)] if is_csv(mp) else iter_manifest(mp))
    labels: dict[str, int] = {}
    n = 0
    with ManifestWriter(out_manifest, manifest_metadata(mp).get("kind", "release"), {**meta, "source": source}) as w:
        for df in chunks:
            df = df.reset_index(drop=True)
            df["image_uri"] = [absolute_image_uri(u, base) for u in df["image_uri"]]
            if task:  # the pipeline's task for every row that names none
                df["task"] = df["task"].astype("string").replace("", pd.NA).fillna(task)
            for k, v in df["label"].value_counts().items():
                labels[str(k)] = labels.get(str(k), 0) + int(v)
            w.write(df)
            n += len(df)
        w.close()
    write_quarantine([], quarantine_path)
    return {"source": source, "manifest": str(out_manifest), "rows_in": n, "rows_out": n,
            "rows_quarantined": 0, "labels": labels}


def ingest_source(source: str, out_manifest: str | Path, quarantine_path: str | Path, task: str | None = None,
                  data_root: str | Path | None = None) -> dict[str, Any]:
    """Ingest a pipeline source (see :func:`resolve_release_source`) into a manifest + quarantine.

    Returns the ingest summary (rows in/out/quarantined, labels)."""
    resolved, extra = resolve_release_source(source)
    if resolved.startswith("manifest:"):
        return {**_copy_release_manifest(Path(resolved[len("manifest:"):]), source, out_manifest, quarantine_path,
                                         task), **extra}
    from galmorph.catalogue.ingest import ingest

    opts = {"task": task} if task else {}
    res = ingest(resolved, out_manifest, quarantine_path, data_root=data_root, **opts)
    return {**res.summary(), **extra}


def holdout_split(manifest_path: str | Path, train_out: str | Path, test_out: str | Path,
                  test_fraction: float = 0.25, seed: int = 0) -> dict[str, int]:
    """Split a labelled manifest into train and held-out test manifests, stratified by label, seeded.

    Training does its own train/validation split inside the train part; evaluation and promotion use
    the held-out part only. Unlabelled rows go to the train part (they are not evaluated)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    df = read_manifest(manifest_path)
    meta = {k: v for k, v in manifest_metadata(manifest_path).items() if k not in ("kind", "schema_version")}
    kind = manifest_metadata(manifest_path).get("kind", "manifest")
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    labelled = df["label"].notna()
    for _, grp in df[labelled].groupby(df.loc[labelled, "label"].astype(str), sort=True):
        idx = np.sort(grp.index.to_numpy())
        k = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        test_idx.extend(rng.choice(idx, size=k, replace=False).tolist())
    is_test = df.index.isin(test_idx)
    write_manifest(df[~is_test], train_out, kind=kind, extra_meta={**meta, "split": "train", "seed": seed})
    write_manifest(df[is_test], test_out, kind=kind, extra_meta={**meta, "split": "test", "seed": seed})
    return {"train": int((~is_test).sum()), "test": int(is_test.sum())}


def publish_release(catalogue: str | Path, summary: str | Path, publish_dir: str | Path, release: str,
                    verdict: str, hold_on_drift: bool = True) -> dict[str, Any]:
    """Publish a scored release catalogue to ``publish_dir/<release>/`` unless drift holds it.

    Held releases are written to ``publish_dir/<release>/HELD`` with the reason, and nothing else; a
    published one gets ``catalogue.parquet``, ``summary.json`` and ``PUBLISHED`` (atomic copies)."""
    if not release or release in (".", "..") or "/" in release or "\\" in release or not release.isprintable():
        raise ValueError(f"release name {release!r} is not one path component; not published")
    dest = Path(publish_dir) / release
    dest.mkdir(parents=True, exist_ok=True)
    if verdict == "drift" and hold_on_drift:
        reason = (f"release {release}: drift monitor verdict 'drift'; publishing held "
                  "(re-run with hold_on_drift=false after review)")
        (dest / "HELD").write_text(reason + "\n")
        log.warning(reason)
        return {"status": "held", "reason": reason, "dir": str(dest)}
    for src, name in ((catalogue, "catalogue.parquet"), (summary, "summary.json")):
        tmp = dest / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest / name)
    (dest / "HELD").unlink(missing_ok=True)
    (dest / "PUBLISHED").write_text(f"verdict={verdict}\n")
    return {"status": "published", "reason": f"drift verdict {verdict!r}", "dir": str(dest)}
