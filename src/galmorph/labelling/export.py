"""Export the label database to a labelled manifest for training (any task of :data:`galmorph.tasks.TASKS`).

Label policy (one label per object from the labels of all labellers; ``unsure`` never counts):

* ``majority`` (default): the class with the most labellers; a tie goes to the class labelled
  most recently among the tied ones.
* ``latest``: the most recent label by any labeller.

The exported ``label`` is always one of the task's classes (the names training reads, e.g. ``CW``,
``ACW``, ``other`` for chirality). Objects whose labels are all ``unsure`` (or, from an older
database, not labels of the task at all) are not exported; they are written to the quarantine table
beside the manifest (``<out>.quarantine.parquet``) with the reason, so that every labelled object is
accounted for. The manifest keeps the queue row of every object (from the database) and adds
``label``, ``task``, ``n_votes``, ``n_<class>`` for each class of the task (``n_symmetric``,
``n_lopsided`` for lopsided), ``n_unsure``, ``labellers``, ``label_agreement`` (fraction of votes for
the exported label) and ``labelled_at``.

The manifest can be versioned with DVC (:func:`dvc_add`), which the training stage consumes.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from galmorph.labelling.choices import UNSURE, labelling_for
from galmorph.labelling.store import LabelStore

log = logging.getLogger(__name__)

POLICIES = ("majority", "latest")


def resolve_labels(labels: pd.DataFrame, policy: str = "majority", task: str = "lopsided") -> pd.DataFrame:
    """One row per object: ``object_id, label (None if no vote for a class), n_votes, n_<class>...,
    n_unsure, n_invalid (labels not of the task), labellers, label_agreement, labelled_at``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown label policy {policy!r}; choose one of {POLICIES}")
    classes = labelling_for(task).classes
    out = []
    for oid, g in labels.groupby("object_id", sort=True):
        votes = g[g.label.isin(classes)]
        counts = {c: int((votes.label == c).sum()) for c in classes}
        label = None
        if len(votes):
            if policy == "latest":
                label = votes.sort_values("updated_at").label.iloc[-1]
            else:
                top = max(counts.values())
                tied = [c for c in classes if counts[c] == top]
                label = tied[0] if len(tied) == 1 else votes[votes.label.isin(tied)].sort_values(
                    "updated_at").label.iloc[-1]
        n_unsure = int((g.label == UNSURE).sum())
        out.append({
            "object_id": str(oid), "label": label, "n_votes": int(len(votes)),
            **{f"n_{c}": counts[c] for c in classes}, "n_unsure": n_unsure,
            "n_invalid": int(len(g) - len(votes) - n_unsure), "labellers": ",".join(sorted(g.labeller)),
            "label_agreement": (counts[label] / len(votes)) if label else float("nan"),
            "labelled_at": g.updated_at.max(),
        })
    return pd.DataFrame(out, columns=["object_id", "label", "n_votes", *(f"n_{c}" for c in classes), "n_unsure",
                                      "n_invalid", "labellers", "label_agreement", "labelled_at"])


def _quarantine_reason(row: dict, task: str) -> str:
    oid = row["object_id"]
    if row["n_invalid"]:
        return (f"object {oid}: no label of the {task} classes {list(labelling_for(task).classes)} "
                f"({row['n_invalid']} label(s) of another task, {row['n_unsure']} 'unsure'; {row['labellers']})")
    return f"object {oid}: only 'unsure' labels ({row['labellers']})"


def export_labels(store: LabelStore, out_path: str | Path, task: str = "lopsided", policy: str = "majority",
                  labeller: str | None = None, object_ids: set[str] | None = None,
                  quarantine_path: str | Path | None = None) -> dict:
    """Write the labelled manifest (kind ``labelled-<task>``) and its quarantine table."""
    from galmorph.catalogue.manifest import quarantine_record, write_manifest, write_quarantine

    out_path = Path(out_path)
    labels = store.labels(task, labeller)
    if object_ids is not None:
        labels = labels[labels.object_id.isin(set(map(str, object_ids)))]
    classes = labelling_for(task).classes
    resolved = resolve_labels(labels, policy, task)
    objects = store.objects()
    if len(objects):
        objects["object_id"] = objects["object_id"].astype(str)
        objects = objects.drop(columns=[c for c in ("label", "task") if c in objects.columns])
    else:
        objects = pd.DataFrame({"object_id": pd.Series(dtype=str)})
    merged = resolved.merge(objects, on="object_id", how="left")
    quarantine = [quarantine_record(r["object_id"], "label-export", _quarantine_reason(r, task), r)
                  for r in merged[merged.label.isna()].to_dict(orient="records")]
    good = merged[merged.label.notna()].drop(columns=["n_invalid"])
    if int(resolved["n_invalid"].sum()):
        log.warning("%d label(s) in %s are not %s labels %s and were left out", int(resolved["n_invalid"].sum()),
                    store.url, task, list(labelling_for(task).labels))
    good["task"] = task
    prov = f"labels from {store.url} (policy={policy}{', labeller=' + labeller if labeller else ''})"
    good["provenance"] = [f"{p}; {prov}" if isinstance(p, str) and p else prov
                          for p in good.get("provenance", pd.Series([None] * len(good), index=good.index))]
    good["labelled_at"] = good["labelled_at"].astype(str)
    meta = {"task": task, "policy": policy, "labeller": labeller, "label_db": store.url,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": list(classes), "counts": {c: int((good.label == c).sum()) for c in classes}}
    write_manifest(good, out_path, kind=f"labelled-{task}", extra_meta=meta)
    qpath = Path(quarantine_path) if quarantine_path else out_path.with_name(out_path.stem + ".quarantine.parquet")
    write_quarantine(quarantine, qpath)
    log.info("exported %d labelled %s objects to %s (%d without a class label -> %s)", len(good), task, out_path,
             len(quarantine), qpath)
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
