"""Export the label database to a labelled manifest for training (task ``lopsided``).

Label policy (one label per object from the labels of all labellers; ``unsure`` never counts):

* ``majority`` (default): the class with the most labellers; a tie goes to the class labelled
  most recently among the tied ones.
* ``latest``: the most recent label by any labeller.

Objects whose labels are all ``unsure`` are not exported; they are written to the quarantine table
beside the manifest (``<out>.quarantine.parquet``) with the reason, so that every labelled object
is accounted for. The manifest keeps the queue row of every object (from the database) and adds
``label``, ``task``, ``n_votes``, ``n_symmetric``, ``n_lopsided``, ``n_unsure``, ``labellers``,
``label_agreement`` (fraction of votes for the exported label) and ``labelled_at``.

The manifest can be versioned with DVC (:func:`dvc_add`), which the training stage consumes.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from galmorph.labelling.store import LabelStore

log = logging.getLogger(__name__)

POLICIES = ("majority", "latest")
CLASSES = ("symmetric", "lopsided")


def resolve_labels(labels: pd.DataFrame, policy: str = "majority") -> pd.DataFrame:
    """One row per object: ``object_id, label (None if only unsure), n_votes, n_<class>, n_unsure,
    labellers, label_agreement, labelled_at``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown label policy {policy!r}; choose one of {POLICIES}")
    out = []
    for oid, g in labels.groupby("object_id", sort=True):
        votes = g[g.label != "unsure"]
        counts = {c: int((votes.label == c).sum()) for c in CLASSES}
        label = None
        if len(votes):
            if policy == "latest":
                label = votes.sort_values("updated_at").label.iloc[-1]
            else:
                top = max(counts.values())
                tied = [c for c in CLASSES if counts[c] == top]
                label = tied[0] if len(tied) == 1 else votes[votes.label.isin(tied)].sort_values(
                    "updated_at").label.iloc[-1]
        out.append({
            "object_id": str(oid), "label": label, "n_votes": int(len(votes)),
            **{f"n_{c}": counts[c] for c in CLASSES}, "n_unsure": int((g.label == "unsure").sum()),
            "labellers": ",".join(sorted(g.labeller)),
            "label_agreement": (counts[label] / len(votes)) if label else float("nan"),
            "labelled_at": g.updated_at.max(),
        })
    return pd.DataFrame(out, columns=["object_id", "label", "n_votes", *(f"n_{c}" for c in CLASSES), "n_unsure",
                                      "labellers", "label_agreement", "labelled_at"])


def export_labels(store: LabelStore, out_path: str | Path, task: str = "lopsided", policy: str = "majority",
                  labeller: str | None = None, object_ids: set[str] | None = None,
                  quarantine_path: str | Path | None = None) -> dict:
    """Write the labelled manifest (kind ``labelled-<task>``) and its quarantine table."""
    from galmorph.catalogue.manifest import quarantine_record, write_manifest, write_quarantine

    out_path = Path(out_path)
    labels = store.labels(task, labeller)
    if object_ids is not None:
        labels = labels[labels.object_id.isin(set(map(str, object_ids)))]
    resolved = resolve_labels(labels, policy)
    objects = store.objects()
    if len(objects):
        objects["object_id"] = objects["object_id"].astype(str)
        objects = objects.drop(columns=[c for c in ("label", "task") if c in objects.columns])
    else:
        objects = pd.DataFrame({"object_id": pd.Series(dtype=str)})
    merged = resolved.merge(objects, on="object_id", how="left")
    quarantine = [quarantine_record(r["object_id"], "label-export", f"object {r['object_id']}: only 'unsure' labels "
                                    f"({r['labellers']})", r)
                  for r in merged[merged.label.isna()].to_dict(orient="records")]
    good = merged[merged.label.notna()].copy()
    good["task"] = task
    prov = f"labels from {store.url} (policy={policy}{', labeller=' + labeller if labeller else ''})"
    good["provenance"] = [f"{p}; {prov}" if isinstance(p, str) and p else prov
                          for p in good.get("provenance", pd.Series([None] * len(good), index=good.index))]
    good["labelled_at"] = good["labelled_at"].astype(str)
    meta = {"task": task, "policy": policy, "labeller": labeller, "label_db": store.url,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": list(CLASSES), "counts": {c: int((good.label == c).sum()) for c in CLASSES}}
    write_manifest(good, out_path, kind=f"labelled-{task}", extra_meta=meta)
    qpath = Path(quarantine_path) if quarantine_path else out_path.with_name(out_path.stem + ".quarantine.parquet")
    write_quarantine(quarantine, qpath)
    log.info("exported %d labelled objects to %s (%d only unsure -> %s)", len(good), out_path, len(quarantine), qpath)
    return {"manifest": out_path, "quarantine": qpath, "n_labelled": int(len(good)), "n_only_unsure": len(quarantine),
            "counts": meta["counts"], "policy": policy}


def dvc_add(path: str | Path) -> Path:
    """``dvc add`` the file (in the DVC repository that contains it, :func:`galmorph.catalogue.dvcops.run_dvc`);
    returns the ``.dvc`` file."""
    from galmorph.catalogue.dvcops import find_dvc_root, run_dvc

    path = Path(path).resolve()
    root = find_dvc_root(path.parent)
    if root is None:
        raise RuntimeError(f"{path} is not inside a DVC repository (run `dvc init` in the project first)")
    run_dvc(["add", str(path.relative_to(root))], cwd=root)
    dvc_file = path.with_name(path.name + ".dvc")
    if not dvc_file.exists():
        raise RuntimeError(f"`dvc add {path}` did not write {dvc_file}")
    return dvc_file
